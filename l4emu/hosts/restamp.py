"""Re-stamp a recorded client's acknowledgements to the emulated server's sequence space.

A client-only capture acknowledges the bytes of the server it once talked to: another initial
sequence number, other response lengths. Like tcpliveplay, the replay rewrites each client ACK to
what the emulated server has sent it so far (a lossless path delivers everything sent before the
client's next packet), so tshark follows every stream without "ACKed unseen segment". Timestamps and
SACK blocks count in the old server's space too; they become NOPs (the emulated server never
agrees to either option, so a client that did not send them is what the conversation implies).
"""

from __future__ import annotations

from l4emu.hosts.packets import ACK, FIN, RST, SYN, TCP, Segment, parse, rewrite_ack

M = 0xFFFFFFFF


SERVER_FIN, CLIENT_FIN = 1, 2


class Restamper:
    def __init__(self):
        # (client address, client port, server address, server port), as the client sees them ->
        # the sequence number after the last byte (or SYN/FIN) the emulated server sent.
        self.sent: dict[tuple, int] = {}
        # The same keys -> which sides sent a FIN: once both did, the client's next packet is its
        # last word on the connection and the entry goes, so a long capture does not pile them up.
        self.fins: dict[tuple, int] = {}

    def server(self, frame: bytes, linktype: int) -> None:
        """Learn from an emulated server's packet, taken as the client receives it (after SNAT)."""
        seg = parse(frame, linktype)
        if seg is None or seg.proto != TCP or seg.flags & RST:
            return
        end = (seg.seq + len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)) & M
        key = (seg.dst, seg.dport, seg.src, seg.sport)
        known = self.sent.get(key)
        if known is None and not seg.flags & SYN:
            return  # a connection already forgotten (or never re-stamped)
        if known is None or seg.flags & SYN or ((end - known) & M) <= 0x7FFFFFFF:
            self.sent[key] = end
        if seg.flags & FIN:
            self.fins[key] = self.fins.get(key, 0) | SERVER_FIN

    def client(self, frame: bytes, seg: Segment) -> bytes:
        """The client's packet with its ACK number in the emulated server's space (others unchanged)."""
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        if seg.flags & SYN and not seg.flags & ACK:
            self._forget(key)  # a new connection on this pair: forget the old one
            return frame
        nxt = self.sent.get(key)
        fins = self.fins.get(key, 0)
        if seg.flags & RST or (
            fins & SERVER_FIN and (fins | (CLIENT_FIN if seg.flags & FIN else 0)) == SERVER_FIN | CLIENT_FIN
        ):
            self._forget(key)  # the connection's last client packet
        elif seg.flags & FIN:
            self.fins[key] = fins | CLIENT_FIN
        if nxt is None or not seg.flags & ACK:
            return frame
        return rewrite_ack(frame, seg, nxt)

    def _forget(self, key: tuple) -> None:
        self.sent.pop(key, None)
        self.fins.pop(key, None)
