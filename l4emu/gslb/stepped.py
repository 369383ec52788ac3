"""A GSLB replay a packet at a time, for sites whose switches do more than rewrite a packet in place.

A site with emulated reals answers for them (l4emu/emulate.py: the hosts' answers re-enter the switch,
the clients' packets are re-stamped into the hosts' sequence space), and a dr, tun or full-NAT real's
switch may make packets (a tunnel's fragments, an ICMP error) or hide the client (full-NAT's source).
The batch path (gslb/replay.py) runs each span past every site and reads verdicts back; here each packet
goes to the one site it is for (its destination a VIP, or its source a real: Sites.route), exactly as
`l4emu replay` would take it with that site's config, and what comes out is written in order.

The packet clock also drives what happens between packets: the events, the emulated reals' health checks
(l4emu/emulated_checks.py: a real whose host cannot answer in time is marked down, so its site turns
unhealthy and the GSLB stops answering with it), and the hosts' own clocks (delayed answers). Per packet
the cost is one dict lookup, one site's work and a clock step per site with emulated reals, whatever
the number of flows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from l4emu.datapath._batch import NS, VERDICT_NAMES, Batch
from l4emu.emulate import Emulator, Out
from l4emu.emulated_checks import NEVER, EmulatedChecks
from l4emu.events import Event
from l4emu.gslb import wire
from l4emu.gslb.replay import apply_event
from l4emu.gslb.sites import NO_SITE

if TYPE_CHECKING:
    from l4emu.gslb.replay import GslbReplay

PASS, NEW, DROP = (VERDICT_NAMES.index(name) for name in ("pass", "new", "drop"))
ONE_PACKET_SLOTS = 64  # a packet and what its switch makes of it (a tunnel's fragments)


class Stepper:
    """Drives a GslbReplay (`run`: its sites, authority and tally) one captured packet at a time."""

    def __init__(self, run: GslbReplay, events: Sequence[Event]):
        self.run, self.sites, self.tally = run, run.sites, run.tally
        self.events = sorted(events, key=lambda e: e.at_s)
        self.applied = 0
        self.start_ns: int | None = None
        self.out = Batch()
        self.writer = None
        self.one = Batch(ONE_PACKET_SLOTS)
        self.emulators: list[Emulator | None] = []
        self.checks: list[EmulatedChecks | None] = []
        self.held: list[Out] = []  # what the hosts sent while their clocks moved on, to write in time order
        self.client = b""  # the source of the packet being handed to an emulated site
        for k, switch in enumerate(self.sites.switches):
            hosted = switch.hosts is not None
            self.emulators.append(Emulator(switch, partial(self._hosted, k)) if hosted else None)
            self.checks.append((EmulatedChecks(switch) or None) if hosted else None)

    # ---- the capture's packets ----------------------------------------------------------------------
    def batch(self, batch: Batch, writer) -> None:
        """Every packet of `batch` in order; what comes out goes to `writer` (None: nothing written)."""
        self.writer = writer
        for i in range(len(batch)):
            ts, origlen, iface, linktype = batch.meta(i)
            self.reach(ts)
            self.packet(batch.packet(i), ts, origlen, iface, linktype)
        self._write_out()

    def finish(self) -> int:
        """After the last packet: the events never reached stay unapplied (the caller warns); returns how
        many were applied."""
        for emulator in self.emulators:
            if emulator is not None:
                emulator.flush()
        self._emit_held()
        self._write_out()
        return self.applied

    def reach(self, ts: int) -> None:
        """The packet clock reaches `ts`: every event and check attempt due before it, in time order, each
        after the hosts' clocks reached its moment."""
        if self.start_ns is None:
            self.start_ns = ts
        while True:
            moment = self._next_moment()
            if moment > ts:
                break
            self._advance_hosts(moment)
            self._moment(moment)
        self._advance_hosts(ts)

    def _next_moment(self) -> int:
        assert self.start_ns is not None, "the first packet sets the start"
        moments = [NEVER]
        if self.applied < len(self.events):
            moments.append(self.start_ns + int(self.events[self.applied].at_s * NS))
        for checks in self.checks:
            if checks is not None:
                moments.append(checks.next_due() if checks.start_ns is not None else self.start_ns)
        return min(moments)

    def _moment(self, moment: int) -> None:
        """Events at `moment` (real events reach the checks of the site holding the real), then checks."""
        for switch in self.sites.switches:
            switch.advance_clock(moment)
        while self.applied < len(self.events):
            event = self.events[self.applied]
            if self.start_ns + int(event.at_s * NS) > moment:  # type: ignore[operator]
                break
            apply_event(self.run, event, moment)
            self.applied += 1
            if not event.site:
                for checks in self.checks:
                    if checks is not None:
                        checks.after_event(event.action, event.endpoint, event.weight)
        for checks in self.checks:
            if checks is not None and (checks.start_ns is None or checks.next_due() <= moment):
                checks.run_due(moment)

    def _advance_hosts(self, now: int) -> None:
        for emulator in self.emulators:
            if emulator is not None:
                emulator.advance(now)
        self._emit_held()

    def packet(self, frame: bytes, ts: int, origlen: int, iface: int, linktype: int) -> None:
        """One captured packet: a DNS query or segment for the authority, else to the site it is for."""
        run = self.run
        if run.tcp_due is not None and ts >= run.tcp_due:
            answers: list = []
            run._tcp_out(run.tcp.advance(ts) if run.tcp else [], -1, answers)
            self._emit_answers(answers)
        dgram = wire.parse(frame, linktype)
        if dgram is not None and (dgram.dst, dgram.dport) in run.listens and dgram.proto == wire.UDP:
            self._emit(frame, ts, iface, linktype, origlen, PASS, 0)
            answers = []
            run._query(frame, dgram, ts, iface, linktype, 0, answers)
            self._emit_answers(answers)
            return
        if (
            dgram is not None
            and dgram.proto == wire.TCP
            and ((dgram.dst, dgram.dport) in run.listens or (dgram.src, dgram.sport) in run.listens)
        ):
            answers = []
            run._tcp(frame, ts, origlen, iface, linktype, 0, answers)
            if not run.replaced:  # a link the responder cannot answer on: the packet passes as it came
                self._emit(frame, ts, iface, linktype, origlen, PASS, 0)
            run.replaced = set()
            self._emit_answers(answers)
            return
        k = self.sites.route(dgram.src, dgram.dst) if dgram is not None else NO_SITE
        if k == NO_SITE and dgram is None:  # no ports (ICMP, a later fragment): any plain site may own it
            k = self._plain_taker(frame, ts, origlen, iface, linktype)
            if k != NO_SITE:
                return
        if k == NO_SITE:
            self._emit(frame, ts, iface, linktype, origlen, PASS, 0)
            return
        if self.sites.down[k]:
            self._emit(frame, ts, iface, linktype, origlen, DROP, 0)
            self.tally.dropped_down[k] += 1
            return
        self.tally.packets[k] += 1
        emulator = self.emulators[k]
        if emulator is not None:
            self.client = dgram.src if dgram is not None else b""
            emulator.client(frame, ts, origlen, iface, linktype)
            self.client = b""
            return
        self._through_switch(k, frame, ts, origlen, iface, linktype, dgram.src if dgram is not None else b"")

    # ---- a site's switch ----------------------------------------------------------------------------
    def _through_switch(self, k: int, frame: bytes, ts: int, origlen: int, iface: int, linktype: int, client: bytes):
        """A plain site's switch takes the packet; it and what the switch made of it are written."""
        one = self._one(frame, ts, origlen, iface, linktype)
        self.sites.switches[k].process(one)
        self._tally_verdict(k, one.result(0)[0], client, ts)
        self._emit_batch(one)

    def _plain_taker(self, frame: bytes, ts: int, origlen: int, iface: int, linktype: int) -> int:
        """A packet without ports past each up plain site's switch (as the batch path does); the first that
        does not pass it takes it, and it is written. NO_SITE: none did (nothing written)."""
        for k, switch in enumerate(self.sites.switches):
            if self.sites.down[k] or self.emulators[k] is not None:
                continue
            one = self._one(frame, ts, origlen, iface, linktype)
            switch.process(one)
            if one.result(0)[0] != "pass":
                self.tally.packets[k] += 1
                self._tally_verdict(k, one.result(0)[0], b"", ts)
                self._emit_batch(one)
                return k
        return NO_SITE

    def _one(self, frame: bytes, ts: int, origlen: int, iface: int, linktype: int) -> Batch:
        self.one.reset()
        self.one.append(frame, ts, iface, linktype, origlen)
        return self.one

    def _tally_verdict(self, k: int, verdict: str, client: bytes, ts: int) -> None:
        if verdict == "new" and client:
            self.tally.connection(client, k, ts)
        elif verdict == "drop":
            self.tally.dropped[k] += 1

    def _hosted(self, k: int, out: Out) -> None:
        """What an emulated site's loop wrote (the client's packet as it arrived, the hosts' answers): held
        while the hosts' clocks move on, so that several sites' answers are written in time order."""
        if self.client:  # the packet being handed over now, and what the hosts answered to it
            if out.verdict == NEW:
                self.tally.connection(self.client, k, out.ts_ns)
            elif out.verdict == DROP:
                self.tally.dropped[k] += 1
            self._emit(out.frame, out.ts_ns, out.iface, out.linktype, out.origlen, out.verdict, out.detail)
            return
        if self.sites.down[k]:  # a down site's answers do not get out
            self.tally.dropped_down[k] += 1
            return
        self.held.append(out)

    # ---- the output ---------------------------------------------------------------------------------
    def _emit_held(self) -> None:
        if not self.held:
            return
        held, self.held = self.held, []
        for out in sorted(held, key=lambda o: o.ts_ns) if len(held) > 1 else held:  # stable: a site's own order kept
            self._emit(out.frame, out.ts_ns, out.iface, out.linktype, out.origlen, out.verdict, out.detail)

    def _emit_answers(self, answers: list) -> None:
        for _after, frame, ts, iface, linktype in answers:
            self._emit(frame, ts, iface, linktype, len(frame), PASS, 0)

    def _emit_batch(self, batch: Batch) -> None:
        for j in range(len(batch)):
            ts, origlen, iface, linktype = batch.meta(j)
            verdict, detail = batch.result(j)
            self._emit(batch.packet(j), ts, iface, linktype, origlen, VERDICT_NAMES.index(verdict), detail)

    def _emit(self, frame: bytes, ts: int, iface: int, linktype: int, origlen: int, verdict: int, detail: int):
        if self.writer is None:
            return
        if not self.out.append(frame, ts, iface, linktype, origlen):
            self._write_out()
            self.out.append(frame, ts, iface, linktype, origlen)
        self.out.set_result(len(self.out) - 1, verdict, detail)

    def _write_out(self) -> None:
        if self.writer is not None and len(self.out):
            self.writer.write(self.out)
        self.out.reset()

    # ---- the summary --------------------------------------------------------------------------------
    def site_summary(self, k: int) -> dict:
        """An emulated site's hosts and checks (empty for a plain site: its summary stays as it was)."""
        emulator, checks = self.emulators[k], self.checks[k]
        if emulator is None:
            return {}
        from l4emu.replay import emulated_summary, emulator_counts

        found = {"emulated": {**emulated_summary(self.sites.switches[k], None), **emulator_counts(emulator)}}
        found["emulated"].pop("inside_written")
        if checks is not None:
            found["health"] = checks.summary()
        return found
