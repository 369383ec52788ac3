"""fragments = "reassemble": Linux's defragmentation before IPVS (ext/l4emu/datapath/_reasm.pyx).

scapy builds the fragments and reads every packet the switch writes; a small Python model of
ip_frag_queue / inet_frag_queue_insert is the oracle for which datagrams complete."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from l4emu import config as configmod
from l4emu.config import ConfigError
from l4emu.datapath._batch import Batch
from l4emu.switch import Switch

LINK = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # given: scapy would look addresses up (2 s each)

REAL4, REAL6, REAL_MAC = "10.1.0.11", "2001:db8:1::5", "02:00:0a:01:00:0b"


def switch_for(forward="masq", mtu=1500, defrag=None, seed=1):
    real4 = {"address": f"{REAL4}:53", "forward": forward}
    real6 = {"address": f"[{REAL6}]:53", "forward": forward}
    if forward == "dr":
        real4["mac"] = real6["mac"] = REAL_MAC
    doc = {"service": [{"vip": "10.0.0.100:53", "protocol": "udp", "fragments": "reassemble", "mtu": mtu,
                        "real": [real4]},
                       {"vip": "[2001:db8::100]:53", "protocol": "udp", "fragments": "reassemble", "mtu": mtu,
                        "real": [real6]},
                       {"vip": "10.0.0.100:80", "protocol": "tcp", "fragments": "reassemble",
                        "real": [{"address": "10.1.0.12:80"}]}]}
    if defrag:
        doc["defrag"] = defrag
    return Switch(configmod.from_dict(doc, {"rr"}), seed=seed)


def datagram(v6, size=3000, ident=77, src=None, payload=None):
    body = payload if payload is not None else bytes(random.Random(size).randbytes(size))
    if v6:
        return (IPv6(src=src or "2001:db8::1", dst="2001:db8::100") / IPv6ExtHdrFragment(id=ident)
                / UDP(sport=4000, dport=53) / body)
    return IP(src=src or "172.16.0.1", dst="10.0.0.100", id=ident) / UDP(sport=4000, dport=53) / body


def pieces_of(packet, size):
    """Fragments of `packet` whose IP packets are at most `size` bytes, as Ethernet frames."""
    if IPv6 in packet:
        return [bytes(LINK / p) for p in fragment6(packet, size)]
    return [bytes(LINK / p) for p in fragment(packet, fragsize=size - 20)]


def run(switch, frames, ts=None):
    batch = Batch.from_frames(frames, 1, ts or [10**9] * len(frames))
    switch.process(batch)
    return [(batch.result(i), batch.packet(i)) for i in range(len(batch))]


def written(rows):
    return [Ether(frame) for (verdict, _), frame in rows if verdict in ("new", "forward", "reply", "more")]


def payload_of(piece):
    if IPv6 in piece:
        return piece[IPv6ExtHdrFragment].offset * 8, bytes(piece[IPv6ExtHdrFragment].payload)
    return piece[IP].frag * 8, bytes(piece[IP].payload)[: piece[IP].len - piece[IP].ihl * 4]


def defragment(pieces):
    """The datagram, as the real's stack would rebuild it from what the switch wrote."""
    parts = sorted(payload_of(p) for p in pieces)
    data = b"".join(d for _, d in parts)
    first = min(pieces, key=lambda p: payload_of(p)[0])
    if IPv6 in first:
        return IPv6(bytes(IPv6(src=first[IPv6].src, dst=first[IPv6].dst, nh=first[IPv6ExtHdrFragment].nh,
                               hlim=first[IPv6].hlim, tc=first[IPv6].tc) / Raw(data)))
    head = first[IP].copy()
    head.remove_payload()
    head.flags, head.frag, head.len, head.chksum = 0, 0, None, None
    return IP(bytes(head / Raw(data)))


def checksums_hold(packet):
    """Every checksum scapy recomputes equals the one written."""
    for layer in (IP, UDP, TCP):
        if layer in packet and hasattr(packet[layer], "chksum"):
            fresh = packet.copy()
            del fresh[layer].chksum
            if type(packet)(bytes(fresh))[layer].chksum != packet[layer].chksum:
                return False
    return True


@pytest.mark.parametrize("forward", ["masq", "dr"])
@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled"])
def test_a_datagram_goes_through_whole_and_leaves_fragmented_as_it_came(forward, v6, order):
    switch = switch_for(forward)
    sent = datagram(v6)
    frames = pieces_of(sent, 1000)
    if order == "reversed":
        frames = frames[::-1]
    elif order == "shuffled":
        random.Random(3).shuffle(frames)
    rows = run(switch, frames)
    verdicts = [verdict for (verdict, _), _ in rows]
    assert verdicts == ["drop"] * (len(frames) - 1) + ["new"] + ["more"] * (len(frames) - 1)
    out = written(rows)
    # the sizes it came in, its IP ID, each header checksum right
    assert sorted(len(f) for f in out) == sorted(len(f) for f in frames)
    assert sorted(payload_of(p)[0] for p in out) == sorted(payload_of(Ether(f))[0] for f in frames)
    for piece in out:
        assert (piece[IPv6ExtHdrFragment].id if v6 else piece[IP].id) == 77
    whole = defragment(out)
    real = REAL6 if v6 else REAL4
    if forward == "masq":
        assert whole.dst == real and whole[UDP].dport == 53
    else:
        assert whole.dst == ("2001:db8::100" if v6 else "10.0.0.100")       # dr: the real owns the VIP
        assert all(p.dst == REAL_MAC for p in out)
    assert (whole.hlim if v6 else whole.ttl) == 63      # both decrement it, as IPVS's non-local forwarding
    assert checksums_hold(whole) and bytes(whole[UDP].payload) == bytes(sent[UDP].payload)
    stats = switch.stats()
    assert (stats["reasm_oks"], stats["reasm_queues"], stats["reasm_memory"]) == (1, 0, 0)


def test_every_ipv4_piece_has_a_valid_header_checksum():
    rows = run(switch_for("dr"), pieces_of(datagram(False), 600))
    for piece in written(rows):
        header = IP(bytes(piece[IP])[: piece[IP].ihl * 4])
        original = header.chksum
        del header.chksum
        assert IP(bytes(header)).chksum == original


@pytest.mark.parametrize("v6", [False, True])
def test_a_smaller_mtu_refragments_in_pieces_that_fit(v6):
    """Fragments larger than the route MTU: IPv4 without DF is cut again in (mtu - 20) & ~7 pieces
    (ip_do_fragment's slow path); IPv6 (dr) gets packet too big, as IPVS's __mtu_check_toobig_v6."""
    switch = switch_for("dr" if v6 else "masq", mtu=1280)
    rows = run(switch, pieces_of(datagram(v6, size=5000), 1500))
    out = written(rows)
    if v6:
        assert [verdict for (verdict, _), _ in rows][-1] == "icmp" and not out
        return
    assert all(len(p[IP]) <= 1280 for p in out)
    assert [len(p[IP]) - 20 for p in out][:-1] == [(1280 - 20) & ~7] * (len(out) - 1)
    assert bytes(defragment(out)[UDP].payload) == bytes(datagram(False, size=5000)[UDP].payload)


def test_a_tcp_datagram_opens_its_connection_once_whole():
    syn = IP(src="172.16.0.9", dst="10.0.0.100", id=5) / TCP(sport=999, dport=80, flags="S") / bytes(2000)
    switch = switch_for()
    rows = run(switch, pieces_of(syn, 700))
    assert [v for (v, _), _ in rows].count("new") == 1 and switch.stats()["connections"] == 1
    assert checksums_hold(defragment(written(rows)))


@pytest.mark.parametrize("v6", [False, True])
def test_an_overlapping_fragment_drops_the_whole_datagram_and_a_duplicate_only_itself(v6):
    sent = datagram(v6, size=2000)
    frames = pieces_of(sent, 800)
    switch = switch_for()
    overlap = Ether(frames[1])
    if v6:
        overlap[IPv6ExtHdrFragment].offset -= 1           # 8 bytes into the first fragment
    else:
        overlap[IP].frag -= 1
        overlap[IP].chksum = None
    rows = run(switch, [frames[0], bytes(overlap), *frames[1:]])
    assert written(rows) == [] and switch.stats()["reasm_overlaps"] == 1       # RFC 5722, and IPv4 alike
    switch = switch_for()
    rows = run(switch, [frames[0], frames[0], *frames[1:]])
    assert len(written(rows)) == len(frames) and switch.stats()["reasm_duplicates"] == 1


def test_a_later_fragment_inside_a_run_of_two_is_a_duplicate_but_across_runs_an_overlap():
    """inet_frag_queue_insert's runs: fragments appended end to end at the tail form one run; one made
    in the middle is a run of its own, so a fragment across two runs overlaps though it adds nothing."""
    sent = datagram(False, size=3192)            # 3200 bytes of payload: 8 pieces of 400
    f = [Ether(x) for x in pieces_of(sent, 420)]
    assert len(f) == 8

    def cover(first, last):                      # one fragment over pieces first..last, MF set
        piece = f[first].copy()
        piece[IP].remove_payload()
        data = b"".join(payload_of(x)[1] for x in f[first:last + 1])
        piece[IP].flags, piece[IP].len, piece[IP].chksum = "MF", None, None
        return bytes(piece / Raw(data))

    switch = switch_for()
    run(switch, [bytes(f[0]), bytes(f[1]), cover(0, 1)])            # within the run 0-1: a duplicate
    assert switch.stats()["reasm_duplicates"] == 1
    switch = switch_for()
    run(switch, [bytes(f[0]), bytes(f[2]), bytes(f[1]), cover(1, 2)])   # runs 0 | 2 | 1 (middle): overlap
    assert switch.stats()["reasm_overlaps"] == 1


def test_a_datagram_whose_fragments_come_too_far_apart_is_forgotten_after_ipfrag_time():
    frames = pieces_of(datagram(False), 1000)
    switch = switch_for(defrag={"ipfrag_time": 5})
    rows = run(switch, frames, [10**9] + [7 * 10**9] * (len(frames) - 1))
    assert written(rows) == [] and switch.stats()["reasm_timeout"] == 1
    assert switch.stats()["reasm_queues"] == 1                   # the later ones wait in a new queue


def test_a_tiny_first_fragment_is_dropped():
    """A first fragment of 8 bytes splits a TCP header (RFC 1858): dropped (`fragment`), the rest wait."""
    sent = IP(src="172.16.0.1", dst="10.0.0.100", id=8) / TCP(sport=1, dport=80, flags="S") / bytes(100)
    tiny = [bytes(LINK / p) for p in fragment(sent, fragsize=8)]
    switch = switch_for()
    rows = run(switch, tiny)
    assert rows[0][0] == ("drop", 8) and written(rows) == []
    assert switch.stats()["reasm_queues"] == 1


@pytest.mark.parametrize("low", [0, 256 << 10])
def test_a_fragment_flood_stays_under_the_memory_limit_and_established_flows_go_on(low):
    """100k fragments of 10k never-completed datagrams: reassembly memory never passes
    ipfrag_high_thresh (but for the one fragment that crosses it), the rest are dropped and counted
    (or, with ipfrag_low_thresh, the oldest datagrams evicted), and a flow keeps going."""
    high = 1 << 20
    switch = switch_for(defrag={"ipfrag_high_thresh": high, "ipfrag_low_thresh": low})
    flow = bytes(LINK / IP(src="172.16.9.9", dst="10.0.0.100") / UDP(sport=7, dport=53) / b"q")
    # ten fragments of 64 bytes end to end, MF on every one: a datagram that never completes
    templates = [bytearray(bytes(LINK / IP(src="172.16.0.1", dst="10.0.0.100", proto=17, flags="MF", frag=8 * k)
                                 / Raw(bytes(64)))) for k in range(10)]
    for r in range(100):
        flood = []
        for k in range(1000):
            frame = templates[k % 10]
            frame[18:20] = ((r * 100 + k // 10) & 0xFFFF).to_bytes(2, "big")
            frame[24:26] = b"\0\0"
            total = sum(int.from_bytes(frame[14 + i:16 + i], "big") for i in range(0, 20, 2))
            total = (total & 0xFFFF) + (total >> 16)
            frame[24:26] = (~((total & 0xFFFF) + (total >> 16)) & 0xFFFF).to_bytes(2, "big")
            flood.append(bytes(frame))
        batch = Batch.from_frames([*flood, flow], 1, [10**9 + r] * 1001)
        switch.process(batch)
        assert batch.result(1000)[0] in ("new", "forward")
    stats = switch.stats()
    assert stats["reasm_peak_memory"] <= high + 2048
    assert stats["reasm_reqds"] == 100_000 and stats["reasm_oks"] == 0
    if low:
        assert stats["reasm_evicted"] > 0 and stats["reasm_memory"] <= high + 2048
    else:
        assert stats["reasm_over_memory"] > 90_000 and stats["dropped"]["fragment_overflow"] > 90_000
    assert stats["forward"] + stats["new"] == 100 and stats["connections"] == 1


def test_the_same_fragments_and_seed_give_the_same_bytes():
    frames = []
    for k, v6 in enumerate([False, True, False]):
        frames += pieces_of(datagram(v6, size=2500 + k, ident=k), 900)[::-1]

    def once():
        return [frame for _, frame in run(switch_for("dr"), frames)]

    assert once() == once()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_batch_cut_anywhere_writes_what_it_writes_whole(data):
    """New slots (refragmented datagrams) are appended, linked and settled once per process call:
    processing the batch in pieces, each call going on from the index the last returned, writes the
    same packets in the same order as one call, and every datagram's pieces follow it."""
    frames = []
    for k in range(data.draw(st.integers(2, 6))):
        v6 = data.draw(st.booleans())
        pieces = pieces_of(datagram(v6, size=1500 + 300 * k, ident=k, src=None), 700)
        frames += data.draw(st.permutations(pieces))
        frames.append(bytes(LINK / IP(src="172.16.0.9", dst="10.0.0.100") / UDP(sport=9, dport=53) / b"q"))
    whole = run(switch_for("dr"), frames)
    switch = switch_for("dr")
    batch = Batch.from_frames(frames, 1, [10**9] * len(frames))
    position, consumed = 0, 0
    for cut in sorted(data.draw(st.lists(st.integers(0, len(frames)), max_size=4))) + [len(frames)]:
        if cut < consumed:
            continue
        position = switch.process(batch, position, 0, position + cut - consumed)
        consumed = cut
    assert [(batch.result(i), batch.packet(i)) for i in range(len(batch))] == whole
    assert [row[0][0] for row in whole].count("more") > 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_datagram_to_no_service_port_passes_as_the_fragments_it_came_in(data):
    """Untouched traffic passes byte for byte: a VIP's datagram for a port no service has is reassembled
    (Linux defragments before it can tell), then written as its fragments were, in the order they came."""
    frames = []
    for k in range(data.draw(st.integers(1, 4))):
        v6 = data.draw(st.booleans())
        size = data.draw(st.integers(100, 4000))
        piece = data.draw(st.integers(200, 1500)) // 8 * 8 + (48 if v6 else 20)
        packet = datagram(v6, size=size, ident=k + 1)
        packet[UDP].dport = 5353
        if not v6:
            packet[IP].tos = data.draw(st.sampled_from([0, 1, 2, 0x10]))
        pieces = pieces_of(packet, piece)
        frames += data.draw(st.permutations(pieces)) if len(pieces) > 1 else pieces
    switch = switch_for("dr")
    rows = run(switch, frames)
    assert [frame for (verdict, _), frame in rows if verdict == "pass"] == frames
    assert {verdict for (verdict, _), _ in rows} <= {"pass", "drop"}
    stats = switch.stats()
    assert stats["passed"] + stats["reasm_fragments_queued"] == len(frames)     # one verdict each


def test_reassemble_takes_masq_and_emulated_reals_and_defrag_keys_are_checked():
    assert switch_for("masq").config.services[0].fragments == "reassemble"
    doc = {"service": [{"vip": "10.0.0.100:53", "protocol": "udp", "fragments": "reassemble",
                        "real": [{"address": "10.1.0.1:53", "emulated": True, "app": "echo"}]}]}
    assert configmod.from_dict(doc, {"rr"}).services[0].fragments == "reassemble"    # tests/test_emulated_fragments.py
    for key, value in [("ipfrag_high_thresh", 10), ("ipfrag_low_thresh", 8 << 20), ("ipfrag_time", 0),
                       ("ipfrag_max_dist", 64)]:
        doc = {"defrag": {key: value}, "service": [{"vip": "10.0.0.100:53", "real": [{"address": "10.1.0.1:53"}]}]}
        with pytest.raises(ConfigError) as caught:
            configmod.from_dict(doc, {"rr"})
        assert caught.value.key.startswith("defrag")


# ---- the oracle: ip_frag_queue and inet_frag_queue_insert in a few lines of Python --------------
def linux_outcome(fragments, v6, udp_length):
    """For one datagram's fragments [(offset, length, more)], in arrival order: the indexes of those
    the switch writes: the one that completes the datagram, and any that is a datagram by itself (IPv4
    offset 0 without MF is no fragment; an IPv6 atomic fragment is reassembled alone, RFC 6946) --
    if it holds the whole UDP datagram its header announces."""
    alone = [i for i, (offset, size, more) in enumerate(fragments) if offset == 0 and not more and size >= udp_length]
    rest = [i for i, f in enumerate(fragments) if f[0] or f[2]]
    done = _completes([fragments[i] for i in rest], v6)
    return sorted(alone + ([rest[done[0]]] if done and done[1] >= udp_length else []))


def _completes(fragments, v6):
    """(index of the fragment that completes the datagram, its length) or None. A discarded queue is
    gone: the fragments after it start a new one (inet_frag_find)."""
    runs, length, first, last, meat = [], 0, False, False, 0
    for i, (offset, size, more) in enumerate(fragments):
        end = offset + size
        if v6 and ((more and end & 7) or end > 65535):
            continue                                  # dropped alone
        if offset == 0 and size < 8:
            continue                                  # tiny first fragment
        ok = True
        if not more:
            if end < length or (last and end != length):
                ok = False
            else:
                last, length = True, end
        else:
            end &= ~7
            if end > length:
                if last:
                    ok = False
                else:
                    length = end
        ok = ok and end > offset
        if ok and runs and runs[-1][1] < end:
            if offset < runs[-1][1]:
                ok = False
            elif offset == runs[-1][1]:
                runs[-1][1] = end
            else:
                runs.append([offset, end])
        elif ok and runs:
            hit = [r for r in runs if not (end <= r[0] or offset >= r[1])]
            if len(hit) == 1 and hit[0][0] <= offset and end <= hit[0][1]:
                continue                              # duplicate: dropped, the queue kept
            if hit:
                ok = False
            else:
                runs.append([offset, end])
                runs.sort()
        elif ok:
            runs.append([offset, end])
        if not ok:                                    # discard_qp: the whole datagram goes
            runs, length, first, last, meat = [], 0, False, False, 0
            continue
        meat += end - offset
        first = first or offset == 0
        if first and last and meat == length:
            return i, length
    return None


def raw_fragment(v6, offset, payload, more, ident=42):
    if v6:
        return bytes(LINK / IPv6(src="2001:db8::1", dst="2001:db8::100")
                     / IPv6ExtHdrFragment(id=ident, offset=offset // 8, m=int(more), nh=17) / Raw(payload))
    return bytes(LINK / IP(src="172.16.0.1", dst="10.0.0.100", id=ident, proto=17, frag=offset // 8,
                              flags="MF" if more else 0) / Raw(payload))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v6=st.booleans(), data=st.data())
def test_which_datagrams_complete_is_what_linux_decides(v6, data):
    """Fragments cut at random points of one datagram, some repeated, some shifted, in any order."""
    size = data.draw(st.integers(16, 600))
    whole = bytes(UDP(sport=4000, dport=53, len=size) / Raw(bytes(range(256)) * 3))[:size]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, size // 8 - 1), max_size=5)))) if size >= 16 else []
    bounds = [0, *(c * 8 for c in cuts), size]
    frags = [(a, b - a, b < size) for a, b in zip(bounds, bounds[1:])]
    extra = data.draw(st.lists(st.tuples(st.integers(0, size // 8), st.integers(1, 200), st.booleans()),
                               max_size=3))
    frags += [(o * 8, min(n, 65000), m) for o, n, m in extra]
    frags = data.draw(st.permutations(frags))
    frames = [raw_fragment(v6, o, (whole + bytes(70000))[o:o + n], m) for o, n, m in frags]
    expected = linux_outcome(frags, v6, size)
    rows = run(switch_for(), frames)
    verdicts = [verdict for (verdict, _), _ in rows if verdict != "more"]     # one row per fragment sent
    sent = [i for i, verdict in enumerate(verdicts) if verdict in ("new", "forward")]
    assert sent == expected, (frags, [r[0] for r in rows])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_forward_fuzz_harness_holds_on_reassembled_fragments(data):
    """fuzz/common.py's run_forward (the atheris 'forward' harness) on fragments of datagrams to its
    reassemble services (or their VIPs' ports no service has), cut, repeated, shifted, mangled and
    shuffled: dropped frames unchanged, a datagram passed as its fragments came, byte for byte, every
    fragment accounted for (a verdict, or waiting within its datagram), the table in its bounds."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "fuzz"))
    from common import encode, run_forward

    frames = []
    for k in range(data.draw(st.integers(1, 3))):
        v6 = data.draw(st.booleans())
        dst = "2001:db8::101" if v6 else "10.0.0.100"
        head = (IPv6(src="2001:db8::1", dst=dst) / IPv6ExtHdrFragment(id=k) if v6
                else IP(src="172.16.0.1", dst=dst, id=k, ttl=data.draw(st.integers(1, 3))))
        port = data.draw(st.sampled_from([53, 5353]))  # 5353: no service, its fragments pass as they came
        packet = head / UDP(sport=k + 1, dport=port) / bytes(data.draw(st.integers(0, 3000)))
        pieces = pieces_of(packet, data.draw(st.integers(1280, 1500)) if v6 else data.draw(st.integers(68, 1500)))
        for piece in pieces:
            frame = bytearray(piece)
            if data.draw(st.integers(0, 9)) == 0:      # a byte of its headers changed
                frame[data.draw(st.integers(14, min(len(frame), 70) - 1))] ^= data.draw(st.integers(1, 255))
            frames += [bytes(frame)] * data.draw(st.integers(1, 2))
    frames = data.draw(st.permutations(frames))
    run_forward(encode(1, frames, [data.draw(st.integers(0, 30)) for _ in frames]))


@pytest.mark.parametrize("reverse", [False, True])
def test_a_nat_reals_fragmented_answer_is_reassembled_and_sent_back_from_the_vip(reverse):
    switch = switch_for()
    query = bytes(LINK / IP(src="172.16.5.5", dst="10.0.0.100") / UDP(sport=4444, dport=53) / b"query")
    assert run(switch, [query])[0][0] == ("new", 0)
    answer = IP(src=REAL4, dst="172.16.5.5", id=91) / UDP(sport=53, dport=4444) / (bytes(range(250)) * 10)
    frames = pieces_of(answer, 1000)
    rows = run(switch, frames[::-1] if reverse else frames)
    verdicts = [verdict for (verdict, _), _ in rows]
    assert verdicts == ["drop"] * (len(frames) - 1) + ["reply"] + ["more"] * (len(frames) - 1)
    out = written(rows)
    assert sorted(len(f) for f in out) == sorted(len(f) for f in frames) and {p[IP].id for p in out} == {91}
    whole = defragment(out)
    assert (whole.src, whole.sport, whole.dst, whole.dport) == ("10.0.0.100", 53, "172.16.5.5", 4444)
    assert checksums_hold(whole)


def tunnel6_switch(fragments="drop"):
    """An IPv4 and an IPv6 service whose one real is reached through an IPv6 tunnel (ipip / ip6ip6)."""
    doc = {"service": [{"vip": "10.0.0.100:53", "protocol": "udp", "mtu": 1500, "fragments": fragments,
                        "source_address": ["10.0.0.2", "2001:db8::2"],
                        "real": [{"address": "[2001:db8:1::7]:53", "forward": "tun"}]},
                       {"vip": "[2001:db8::100]:53", "protocol": "udp", "mtu": 1500, "fragments": fragments,
                        "source_address": ["10.0.0.2", "2001:db8::2"],
                        "real": [{"address": "[2001:db8:1::8]:53", "forward": "tun"}]}]}
    return Switch(configmod.from_dict(doc, {"rr"}), seed=1)


def outer_fragments_hold(rows, inner):
    """Every piece is an outer IPv6 fragment of at most 1500 bytes from the switch to the real, all with one
    identification; scapy's defragment6 gives back one IPv6 packet whose payload is `inner`."""
    from scapy.layers.inet6 import defragment6
    pieces = written(rows)
    assert len(pieces) >= 2 and all(IPv6ExtHdrFragment in p and len(p[IPv6]) <= 1500 for p in pieces)
    assert len({p[IPv6ExtHdrFragment].id for p in pieces}) == 1
    assert [p[IPv6ExtHdrFragment].offset for p in pieces] == sorted(p[IPv6ExtHdrFragment].offset for p in pieces)
    whole = defragment6([p[IPv6] for p in pieces])
    assert whole.src == "2001:db8::2" and bytes(whole.payload) == inner
    return whole


@pytest.mark.parametrize("size", [1461, 3000, 9000])
def test_an_ipv4_packet_without_df_over_an_ipv6_tunnel_mtu_leaves_as_outer_fragments(size):
    """IPVS sets ignore_df on its IPv6 tunnel packets: ip6_fragment splits the outer IPv6 packet."""
    packet = IP(src="172.16.0.1", dst="10.0.0.100", ttl=9) / UDP(sport=4000, dport=53) / bytes(size - 28)
    rows = run(tunnel6_switch(), [bytes(LINK / packet)])
    inner = packet.copy()
    inner.ttl = 8
    inner.chksum = None
    whole = outer_fragments_hold(rows, bytes(IP(bytes(inner))))
    assert whole.nh == 4 and [v for (v, _), _ in rows] == ["new"] + ["more"] * (len(rows) - 1)


def test_an_ipv4_packet_with_df_over_an_ipv6_tunnel_mtu_gets_fragmentation_needed():
    packet = IP(src="172.16.0.1", dst="10.0.0.100", flags="DF") / UDP(sport=4000, dport=53) / bytes(1500 - 28)
    rows = run(tunnel6_switch(), [bytes(LINK / packet)])
    assert [v for (v, _), _ in rows] == ["icmp"]


def test_a_reassembled_ipv6_datagram_over_an_ipv6_tunnel_leaves_as_outer_fragments_if_each_fragment_fit():
    """__mtu_check_toobig_v6 goes by the largest fragment (frag_max_size): 1000-byte fragments fit the
    tunnel's 1460, so the whole datagram goes in outer fragments; 1500-byte ones do not: packet too big."""
    packet = (IPv6(src="2001:db8::1", dst="2001:db8::100", hlim=9) / IPv6ExtHdrFragment(id=5)
              / UDP(sport=4000, dport=53) / (bytes(range(250)) * 12))
    rows = run(tunnel6_switch("reassemble"), pieces_of(packet, 1000))
    inner = IPv6(src="2001:db8::1", dst="2001:db8::100", hlim=8) / UDP(sport=4000, dport=53) / (bytes(range(250)) * 12)
    whole = outer_fragments_hold(rows, bytes(inner))
    assert whole.nh == 41
    rows = run(tunnel6_switch("reassemble"), pieces_of(packet, 1500))
    assert [v for (v, _), _ in rows if v != "drop"] == ["icmp"]
