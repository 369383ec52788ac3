"""A small, obviously-correct reference switch in pure Python (scapy does the bytes): the oracle the
Cython datapath is compared against on generated traffic. Slow on purpose: clarity over speed."""
from __future__ import annotations

from scapy.all import IP, TCP, UDP, Ether, raw

# IPVS tcp_states, written out by state name: (direction, event) -> {state: next state}.
_COLS = "NONE ESTABLISHED SYN_SENT SYN_RECV FIN_WAIT TIME_WAIT CLOSE CLOSE_WAIT LAST_ACK LISTEN SYNACK".split()
_ROWS = {
    ("in", "syn"): "SR ES ES SR SR SR SR SR SR SR SR", ("in", "fin"): "CL CW SS TW TW TW CL CW LA LI TW",
    ("in", "ack"): "CL ES SS ES FW TW CL CW CL LI ES", ("in", "rst"): "CL CL CL SR CL CL CL CL LA LI SR",
    ("out", "syn"): "SS ES SS SR SS SS SS SS SS LI SR", ("out", "fin"): "TW FW SS TW FW TW CL TW LA LI TW",
    ("out", "ack"): "ES ES SS ES FW TW CL CW LA ES ES", ("out", "rst"): "CL CL SS CL CL TW CL CL CL CL CL",
}
_ABBR = dict(zip("NO ES SS SR FW TW CL CW LA LI SA".split(), _COLS))
NEXT = {key: dict(zip(_COLS, (_ABBR[a] for a in row.split()))) for key, row in _ROWS.items()}
TIMEOUT = {"NONE": 2, "ESTABLISHED": 900, "SYN_SENT": 120, "SYN_RECV": 60, "FIN_WAIT": 120, "TIME_WAIT": 120,
           "CLOSE": 10, "CLOSE_WAIT": 60, "LAST_ACK": 30, "LISTEN": 120, "SYNACK": 120, "UDP": 300}


def _event(flags) -> str | None:
    for bit, name in (("R", "rst"), ("S", "syn"), ("F", "fin"), ("A", "ack")):
        if bit in str(flags):
            return name
    return None


class ModelSwitch:
    """IPv4 Ethernet only, one rr service per (vip, port, proto): enough to check the datapath's decisions."""

    def __init__(self, services: dict[tuple[str, int, str], list[tuple[str, int]]]):
        self.services = services
        self.turn = {key: 0 for key in services}
        self.flows: dict[tuple, dict] = {}       # forward and reply tuples -> the same flow dict
        self.clock = 0.0

    def process(self, frame: bytes, t: float) -> tuple[str, bytes]:
        self.clock = max(self.clock, t)
        pkt = Ether(frame)
        if IP not in pkt or not (TCP in pkt or UDP in pkt):
            return "pass", frame
        l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
        proto = "tcp" if TCP in pkt else "udp"
        key = (pkt[IP].src, l4.sport, pkt[IP].dst, l4.dport, proto)
        event = _event(l4.flags) if proto == "tcp" else None
        flow = self.flows.get(key)
        if flow and flow["expires"] <= self.clock:
            self._forget(flow)
            flow = None
        if flow and key == flow["fwd"] and proto == "tcp" and event == "syn" and "A" not in str(l4.flags) \
                and flow["state"] in ("TIME_WAIT", "CLOSE"):
            self._forget(flow)
            flow = None
        if flow is None:
            reals = self.services.get((pkt[IP].dst, l4.dport, proto))
            if reals is None:
                return "pass", frame
            if proto == "tcp" and set(str(l4.flags)) & set("SAFR") != {"S"}:    # only a bare SYN opens
                return "drop", frame
            service = (pkt[IP].dst, l4.dport, proto)
            real = reals[self.turn[service] % len(reals)]
            self.turn[service] += 1
            flow = {"fwd": key, "rep": (real[0], real[1], key[0], key[1], proto), "vip": (key[2], key[3]),
                    "real": real, "state": "UDP" if proto == "udp" else NEXT[("in", event)]["NONE"]}
            self.flows[flow["fwd"]] = self.flows[flow["rep"]] = flow
            verdict = "new"
        else:
            direction = "in" if key == flow["fwd"] else "out"
            if proto == "tcp" and event:
                flow["state"] = NEXT[(direction, event)][flow["state"]]
            verdict = "forward" if direction == "in" else "reply"
        flow["expires"] = self.clock + TIMEOUT[flow["state"]]
        pkt[IP].ttl -= 1                        # NAT routes both ways (IPVS, Linux ip_forward); TTL 1 is not generated
        if verdict == "reply":
            pkt[IP].src, l4.sport = flow["vip"]
        else:
            pkt[IP].dst, l4.dport = flow["real"]
        del pkt[IP].chksum
        if proto == "tcp" or l4.chksum != 0:
            del l4.chksum
        return verdict, raw(pkt)

    def _forget(self, flow):
        del self.flows[flow["fwd"]], self.flows[flow["rep"]]
