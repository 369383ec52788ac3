"""The TCP responder of one emulated host: handshakes, listen queues, data, close, resets.

It follows Linux where a user can see the difference: the accept queue holds backlog + 1, a SYN
that finds it full is dropped, and the handshake's last ACK into a full queue is ignored (or reset
with syn_overflow = "reset", Linux's tcp_abort_on_overflow). A segment no socket owns gets a RST
(RFC 9293 3.10.7.1). The path to the client is lossless, so there are no retransmission timers;
the only clocks are TIME-WAIT (60 s), how long a half-open request is kept (63 s, as long as
Linux's five SYN-ACK retries take) and the application's accept pace, all on the packet clock.
"""

from __future__ import annotations

import random

from l4emu.datapath._batch import NS
from l4emu.hosts.apps import STREAM_APPS
from l4emu.hosts.packets import ACK, FIN, PSH, RST, SYN, Segment, tcp_options, tcp_packet
from l4emu.hosts.sockets import (
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    ESTAB,
    FIN_WAIT_1,
    FIN_WAIT_2,
    LAST_ACK,
    SYN_RECV,
    TIME_WAIT,
    Conn,
    Handles,
    Listener,
    endpoint,
)

M = 0xFFFFFFFF
MSS = {4: 1460, 6: 1440}  # a 1500-byte MTU
OUR_SHIFT = 7  # the window scale Linux offers with default buffers
RCVBUF = 65535
TIME_WAIT_NS = 60 * NS  # Linux TCP_TIMEWAIT_LEN
SYN_RECV_NS = 63 * NS


def before(a: int, b: int) -> bool:
    """a comes before b in sequence space (RFC 1982 arithmetic)."""
    return ((a - b) & M) > 0x7FFFFFFF


class TcpResponder:
    """Every TCP socket of one host; `segment` and `advance` return the packets to send."""

    def __init__(self, address: bytes, handles: Handles, rng: random.Random, counters: dict):
        self.address, self.family = address, 4 if len(address) == 4 else 6
        self.handles, self.rng, self.counters = handles, rng, counters
        self.listeners: dict[int, Listener] = {}
        self.conns: dict[tuple, Conn] = {}
        self.out: list[bytes] = []
        self.ip_id = 0

    def listen(self, port: int, app: str, backlog: int, accept_rate: float, abort_on_overflow: bool) -> Listener:
        lst = Listener(port, app, backlog, accept_rate, abort_on_overflow, self.handles.take())
        self.listeners[port] = lst
        return lst

    # ---- output -------------------------------------------------------------------------------
    def _packet(
        self,
        dst: bytes,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        options: bytes = b"",
        payload: bytes = b"",
    ) -> None:
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        self.out.append(
            tcp_packet(
                self.family, self.address, dst, sport, dport, seq, ack, flags, window, options, payload, self.ip_id
            )
        )
        self.counters["segments_out"] += 1

    def _send(self, conn: Conn, flags: int, payload: bytes = b"") -> None:
        window = max(0, RCVBUF - len(conn.recv_buf)) >> (conn.rcv_shift if conn.scaling else 0)
        self._packet(conn.peer, conn.port, conn.peer_port, conn.snd_nxt, conn.rcv_nxt, flags, window, b"", payload)

    def _syn_ack(self, conn: Conn) -> None:
        options = bytes([2, 4]) + MSS[self.family].to_bytes(2, "big")
        if conn.scaling:
            options += bytes([1, 3, 3, OUR_SHIFT])
        self._packet(conn.peer, conn.port, conn.peer_port, conn.iss, conn.rcv_nxt, SYN | ACK, RCVBUF, options)

    def _reset_for(self, seg: Segment) -> None:
        """RFC 9293 3.10.7.1: a RST that the sender of `seg` will accept; never one for a RST."""
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            seq, ack, flags = seg.ack, 0, RST
        else:
            seq, flags = 0, RST | ACK
            ack = seg.seq + len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
        self._packet(seg.src, seg.dport, seg.sport, seq, ack, flags, 0)
        self.counters["resets_sent"] += 1

    # ---- input --------------------------------------------------------------------------------
    def segment(self, seg: Segment, now: int) -> list[bytes]:
        self.out = []
        self.counters["segments_in"] += 1
        conn = self.conns.get((seg.src, seg.sport, seg.dport))
        if (
            conn is not None
            and conn.state == TIME_WAIT
            and seg.flags & (SYN | ACK | RST) == SYN
            and before(conn.rcv_nxt, seg.seq)
        ):
            self._remove(conn)  # Linux lets a new SYN past the old one's sequence reopen the pair
            conn = None
        if conn is None:
            self._no_connection(seg, now)
        elif conn.state == SYN_RECV:
            self._half_open(conn, seg, now)
        else:
            self._synchronized(conn, seg, now)
        return self.out

    def _no_connection(self, seg: Segment, now: int) -> None:
        lst = self.listeners.get(seg.dport)
        if lst is None:
            if seg.flags & SYN and not seg.flags & ACK:
                self.counters["closed_port"] += 1
            self._reset_for(seg)
            return
        if seg.flags & (SYN | ACK | RST) != SYN:
            self._reset_for(seg)  # an ACK (or SYN-ACK) to a listener: no such connection
            return
        self.counters["syns"] += 1
        if lst.accept_queue_full() or lst.syn_queue_full():
            self.counters["listen_drops"] += 1
            self.counters["listen_overflows"] += lst.accept_queue_full()
            return
        options = tcp_options(seg.options)
        conn = Conn(
            self.family,
            seg.src,
            seg.sport,
            seg.dport,
            lst,
            iss=self.rng.getrandbits(32),
            irs=seg.seq,
            born_ns=now,
            deadline_ns=now + SYN_RECV_NS,
        )
        conn.rcv_nxt = (seg.seq + 1) & M
        conn.snd_una, conn.snd_nxt = conn.iss, (conn.iss + 1) & M
        conn.snd_wnd = seg.window  # never scaled in a SYN
        if len(options.get(2, b"")) == 2:
            conn.mss = min(int.from_bytes(options[2], "big"), MSS[self.family])
        if len(options.get(3, b"")) == 1:
            conn.scaling, conn.snd_shift, conn.rcv_shift = True, min(options[3][0], 14), OUR_SHIFT
        lst.syn_queue[conn.key] = conn
        self.conns[conn.key] = conn
        self._syn_ack(conn)

    def _half_open(self, conn: Conn, seg: Segment, now: int) -> None:
        lst = conn.listener
        if seg.flags & RST:
            if seg.seq == conn.rcv_nxt:
                self._remove(conn)
            return
        if seg.flags & SYN:
            if not seg.flags & ACK and seg.seq == conn.irs:
                self._syn_ack(conn)  # the SYN again: the SYN-ACK again
            return
        if not seg.flags & ACK:
            return
        if seg.ack != conn.snd_nxt:
            self._reset_for(seg)
            return
        if lst.accept_queue_full():
            self.counters["listen_overflows"] += 1
            if lst.abort_on_overflow:
                self._reset_for(seg)
                self._remove(conn)
            return  # else ignored: still half-open, as in Linux
        del lst.syn_queue[conn.key]
        conn.state, conn.snd_una, conn.deadline_ns = ESTAB, seg.ack, 0
        lst.accept_queue.append(conn)
        conn.born_ns = now
        self._accept_due(lst, now)
        self._synchronized(conn, seg, now)

    def _synchronized(self, conn: Conn, seg: Segment, now: int) -> None:
        flags = seg.flags
        if flags & RST:
            if seg.seq == conn.rcv_nxt:
                self.counters["resets_received"] += 1
                self._remove(conn)
            elif not before(seg.seq, conn.rcv_nxt):
                self._send(conn, ACK)  # RFC 5961 challenge ACK
            return
        if flags & SYN:
            self._send(conn, ACK)  # RFC 5961 4.2
            return
        if not flags & ACK:
            return
        if before(conn.snd_nxt, seg.ack):
            self._send(conn, ACK)  # acknowledges what was never sent
            return
        if before(conn.snd_una, seg.ack):
            conn.snd_una = seg.ack
        conn.snd_wnd = seg.window << conn.snd_shift
        if conn.fin_sent and conn.snd_una == conn.snd_nxt:
            if conn.state == LAST_ACK:
                self._remove(conn)
                return
            if conn.state == FIN_WAIT_1:
                conn.state = FIN_WAIT_2
            elif conn.state == CLOSING:
                conn.state, conn.deadline_ns = TIME_WAIT, now + TIME_WAIT_NS
        if not self._receive(conn, seg, now) and not self._flush(conn) and (seg.payload or flags & FIN):
            self._send(conn, ACK)

    def _receive(self, conn: Conn, seg: Segment, now: int) -> bool:
        """Take in order data and FIN; True when a packet (ACK, data or RST) went out for it."""
        data, fin, seq = seg.payload, bool(seg.flags & FIN), seg.seq
        if not data and not fin:
            return False
        cut = (conn.rcv_nxt - seq) & M
        if cut and cut <= 0x7FFFFFFF:  # starts before what we expect
            if cut > len(data) or (cut == len(data) and not fin):
                return False  # all seen before: the caller re-ACKs
            data = data[cut:]
        elif cut:
            self.counters["out_of_order"] += 1  # a gap: duplicate ACK, data dropped
            return False
        if conn.state not in (ESTAB, FIN_WAIT_1, FIN_WAIT_2):
            return False  # past the peer's FIN: a retransmission
        if data and conn.handle is None and conn.fin_pending:
            self._send(conn, RST | ACK)  # Linux: data for a closed (orphaned) socket
            self.counters["resets_sent"] += 1
            self._remove(conn)
            return True
        conn.rcv_nxt = (conn.rcv_nxt + len(data) + fin) & M
        if fin:
            conn.peer_fin = True
            if conn.state == ESTAB:
                conn.state = CLOSE_WAIT
            elif conn.state == FIN_WAIT_1:
                conn.state = CLOSING
            else:
                conn.state, conn.deadline_ns = TIME_WAIT, now + TIME_WAIT_NS
        self._feed(conn, data)
        return self._flush(conn)

    # ---- the application side -----------------------------------------------------------------
    def _feed(self, conn: Conn, data: bytes) -> None:
        """Data (and EOF) to the application, or into Recv-Q while nobody has accepted the connection."""
        if conn.app is None:
            if conn.handle is None and not conn.fin_pending:
                conn.recv_buf += data
            return
        reply, close = conn.app.on_data(data) if data else (b"", False)
        if conn.peer_fin and not close:
            more, close = conn.app.on_eof()
            reply += more
        conn.send_buf += reply
        if close:
            assert conn.handle is not None, "an application runs on an accepted (numbered) socket"
            self.handles.release(conn.handle)  # close(2): the number is free at once
            conn.handle, conn.app, conn.fin_pending = None, None, True

    def _flush(self, conn: Conn) -> bool:
        """Send what the peer's window allows, then the FIN once the buffer is empty; True if anything went."""
        sent = False
        while conn.send_buf:
            room = conn.snd_wnd - ((conn.snd_nxt - conn.snd_una) & M)
            if room <= 0:
                break
            n = min(conn.mss, len(conn.send_buf), room)
            chunk = bytes(conn.send_buf[:n])
            del conn.send_buf[:n]
            fin = not conn.send_buf and conn.fin_pending
            self._send(conn, ACK | (0 if conn.send_buf else PSH) | (FIN if fin else 0), chunk)
            conn.snd_nxt = (conn.snd_nxt + n) & M
            sent = True
            if fin:
                self._fin_sent(conn)
        if conn.fin_pending and not conn.fin_sent and not conn.send_buf:
            self._send(conn, FIN | ACK)
            self._fin_sent(conn)
            sent = True
        return sent

    def _fin_sent(self, conn: Conn) -> None:
        conn.snd_nxt = (conn.snd_nxt + 1) & M
        conn.fin_sent = True
        conn.state = {ESTAB: FIN_WAIT_1, CLOSE_WAIT: LAST_ACK}.get(conn.state, conn.state)

    def _accept_due(self, lst: Listener, now: int) -> list[tuple[int, list[bytes]]]:
        """accept(2) what the application's pace allows by `now`; (time, packets) of each accept."""
        done = []
        interval = int(NS / lst.accept_rate) if lst.accept_rate else 0
        while lst.accept_queue and lst.ready_ns <= now:
            conn = lst.accept_queue.popleft()
            at = max(lst.ready_ns, conn.born_ns)
            lst.ready_ns = at + interval
            outer, self.out = self.out, []
            conn.handle = self.handles.take()
            conn.app = STREAM_APPS[lst.app](endpoint(self.address, lst.port))
            lst.accepted += 1
            self.counters["accepted"] += 1
            data = bytes(conn.recv_buf)
            conn.recv_buf.clear()
            self._feed(conn, data)
            self._flush(conn)
            done.append((at, self.out))
            self.out = outer + self.out
        return done

    def advance(self, now: int) -> list[tuple[int, list[bytes]]]:
        """Run the clocks to `now`: accepts now due, TIME-WAIT and stale half-open requests ending."""
        done = []
        for lst in self.listeners.values():
            if lst.accept_queue and lst.ready_ns <= now:
                saved, self.out = self.out, []
                done += self._accept_due(lst, now)
                self.out = saved
        for conn in [c for c in self.conns.values() if c.deadline_ns and c.deadline_ns <= now]:
            self.counters["syn_recv_expired" if conn.state == SYN_RECV else "time_wait_ended"] += 1
            self._remove(conn)
        return done

    def next_deadline(self) -> int | None:
        times = [lst.ready_ns for lst in self.listeners.values() if lst.accept_queue]
        times += [c.deadline_ns for c in self.conns.values() if c.deadline_ns]
        return min(times) if times else None

    def _remove(self, conn: Conn) -> None:
        lst = conn.listener
        lst.syn_queue.pop(conn.key, None)
        if conn in lst.accept_queue:
            lst.accept_queue.remove(conn)  # reset before accept(): never handed out
        if conn.handle is not None:
            self.handles.release(conn.handle)  # the app sees the error and closes
            conn.handle, conn.app = None, None
        conn.state = CLOSED
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
