"""Generated traffic through the Cython datapath and through the pure-Python model: same bytes, same verdicts."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Ether, raw

from conftest import Harness, make_switch, service_toml
from model import ModelSwitch

REALS = [("10.1.0.1", 8080), ("10.1.0.2", 8080)]
UDP_REALS = [("10.1.0.11", 53)]
CONFIG = (service_toml(reals=[f"{ip}:{port}" for ip, port in REALS])
          + service_toml("10.0.0.100:53", [f"{ip}:{port}" for ip, port in UDP_REALS], 'protocol = "udp"'))
CLIENTS = ["192.0.2.1", "192.0.2.2"]
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

# One step: who sends (a client to the VIP, or a real back to a client), with which flags, and how
# much time passes first (sometimes enough for timeouts).
step = st.tuples(
    st.sampled_from(["client", "real", "udp_client", "udp_real", "other"]),
    st.integers(0, 1),                                  # which client
    st.integers(0, 1),                                  # which client port
    st.integers(0, 1),                                  # which real
    st.sampled_from(["S", "SA", "A", "PA", "FA", "R", "RA", ""]),
    st.sampled_from([0.0, 0.001, 1.0, 9.0, 11.0, 59.0, 61.0, 130.0]),
)


def frame_for(kind, client, cport, real, flags):
    c, sport = CLIENTS[client], 40000 + cport
    if kind == "client":
        return E / IP(src=c, dst="10.0.0.100") / TCP(sport=sport, dport=80, flags=flags) / b"data"
    if kind == "real":
        r = REALS[real]
        return E / IP(src=r[0], dst=c) / TCP(sport=r[1], dport=sport, flags=flags)
    if kind == "udp_client":
        return E / IP(src=c, dst="10.0.0.100") / UDP(sport=sport, dport=53) / b"q"
    if kind == "udp_real":
        return E / IP(src=UDP_REALS[0][0], dst=c) / UDP(sport=53, dport=sport) / b"a"
    return E / IP(src=c, dst="198.51.100.1") / TCP(sport=sport, dport=80, flags=flags)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, min_size=1, max_size=40))
def test_datapath_matches_model(tmp_path, steps):
    harness = Harness(make_switch(CONFIG, tmp_path))
    model = ModelSwitch({("10.0.0.100", 80, "tcp"): REALS, ("10.0.0.100", 53, "udp"): UDP_REALS})
    t = 1000.0
    frames, times = [], []
    for kind, client, cport, real, flags, gap in steps:
        t += gap
        frames.append(raw(frame_for(kind, client, cport, real, flags)))
        times.append(t)
    results = harness.run(frames, times_s=times)
    for k, (frame, when) in enumerate(zip(frames, times)):
        expected_verdict, expected_bytes = model.process(frame, when)
        verdict, _, out = results[k]
        assert verdict == expected_verdict, (k, steps[k])
        if verdict != "drop":
            assert out == expected_bytes, (k, steps[k])
