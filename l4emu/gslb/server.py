"""The emulated authoritative DNS server of the GSLB: a query's bytes in, a response's bytes out.

Messages are read and written by dnspython, the field's library. As an authoritative server answers:
AA set, RD echoed, the ID and question copied; a query dnspython cannot read gets FORMERR (its ID kept
when the 12-byte header is there; a shorter one is dropped and counted), an unknown name NXDOMAIN, a
known name of another type NOERROR with no answer, an opcode other than QUERY NOTIMP. An answer that
does not fit the UDP payload (512 bytes, or the query's EDNS size) is sent truncated (TC) for the client
to ask again over TCP.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from l4emu.config import IPAddress, format_address
from l4emu.gslb.config import Answer, GslbConfig, Record
from l4emu.gslb.policy import Network, Policy, create

HEADER_BYTES = 12
UDP_PAYLOAD = 512  # RFC 1035 4.2.1: without EDNS a UDP message is at most 512 bytes
TCP_PAYLOAD = 65535
QR_BIT = 0x8000
OPCODE_MASK = 0x7800
RD_BIT = 0x0100


@dataclass
class Outcome:
    """What one query got: its rcode's name, the record it matched, the answers' indexes, truncation."""

    rcode: str
    record: Record | None = None
    chosen: tuple[int, ...] = ()
    truncated: bool = False


class Authority:
    """Every [[gslb]] record, by listen address and name; `healthy(answer)` and `load(answer)` read the
    sites' switches at the moment of each query."""

    def __init__(self, config: GslbConfig, healthy: Callable[[Answer], bool], load: Callable[[Answer], int]):
        self.healthy, self.load = healthy, load
        self.records: dict[tuple, list[tuple[Record, Policy, list]]] = {}
        for record in config.records:
            # Each answer's rdata made once: building it from text is most of a query's cost.
            rdatas = [
                dns.rdata.from_text("IN", record.rdtype, format_address(answer.address)) for answer in record.answers
            ]
            entry = (record, create(record, config.sites), rdatas)
            self.records.setdefault((record.listen, record.domain), []).append(entry)
        self.listens = {record.listen for record in config.records}
        self.counters: Counter[str] = Counter()

    def respond(
        self, wire: bytes, client: IPAddress, listen: tuple[IPAddress, int], tcp: bool = False
    ) -> tuple[bytes | None, Outcome]:
        """The response to `wire` from `client` at `listen` (None: dropped: too short to answer, or not a query)."""
        if len(wire) < HEADER_BYTES:
            self.counters["dropped_short"] += 1
            return None, Outcome("dropped")
        if struct.unpack_from("!H", wire, 2)[0] & QR_BIT:
            self.counters["dropped_response"] += 1  # a response sent to us: never answer one (loops)
            return None, Outcome("dropped")
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - dnspython raises many types on hostile input; each is a FORMERR
            return self._formerr(wire), self._count(Outcome("FORMERR"))
        if query.opcode() != dns.opcode.QUERY:
            return self._bare(query, dns.rcode.NOTIMP, tcp), self._count(Outcome("NOTIMP"))
        if len(query.question) != 1:
            return self._bare(query, dns.rcode.FORMERR, tcp), self._count(Outcome("FORMERR"))
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            return self._bare(query, dns.rcode.REFUSED, tcp), self._count(Outcome("REFUSED"))
        named = self.records.get((listen, question.name.to_text().lower()), [])
        if not named:
            return self._bare(query, dns.rcode.NXDOMAIN, tcp), self._count(Outcome("NXDOMAIN"))
        kind = dns.rdatatype.to_text(question.rdtype)
        matched = [entry for entry in named if entry[0].rdtype == kind]
        if not matched:
            return self._bare(query, dns.rcode.NOERROR, tcp), self._count(Outcome("NODATA"))
        record, policy, rdatas = matched[0]
        subnet = _client_subnet(query, client) if record.ecs else _host(client)
        healthy = [self.healthy(a) for a in record.answers]
        chosen = policy.choose(subnet, healthy, [self.load(a) for a in record.answers])
        if not chosen:
            if record.fallback != "all":
                rcode = dns.rcode.REFUSED if record.fallback == "refuse" else dns.rcode.SERVFAIL
                return self._bare(query, rcode, tcp), self._count(Outcome(dns.rcode.to_text(rcode), record))
            chosen = list(range(len(record.answers)))
        response = self._response(query, dns.rcode.NOERROR)
        response.answer.append(dns.rrset.from_rdata_list(question.name, record.ttl, [rdatas[i] for i in chosen]))
        _echo_ecs(query, response, subnet.prefixlen if record.ecs and record.policy in ("topology", "hashed") else 0)
        wire_out, truncated = self._to_wire(response, query, tcp)
        return wire_out, self._count(Outcome("NOERROR", record, tuple(chosen), truncated))

    def _count(self, outcome: Outcome) -> Outcome:
        self.counters[outcome.rcode] += 1
        self.counters["truncated"] += outcome.truncated
        return outcome

    @staticmethod
    def _response(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.set_rcode(rcode)
        return response

    def _bare(self, query: dns.message.Message, rcode: dns.rcode.Rcode, tcp: bool) -> bytes:
        """An answerless response: the question echoed, the rcode set."""
        return self._to_wire(self._response(query, rcode), query, tcp)[0]

    @staticmethod
    def _to_wire(response: dns.message.Message, query: dns.message.Message, tcp: bool) -> tuple[bytes, bool]:
        limit = TCP_PAYLOAD if tcp else max(UDP_PAYLOAD, query.payload if query.edns >= 0 else 0)
        try:
            return response.to_wire(max_size=limit), False
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit), True

    @staticmethod
    def _formerr(wire: bytes) -> bytes:
        """FORMERR for a query dnspython could not read: its ID, opcode and RD kept, no sections (RFC 1035
        leaves a server free not to echo what it could not parse)."""
        qid, flags = struct.unpack_from("!HH", wire, 0)
        flags = QR_BIT | (flags & (OPCODE_MASK | RD_BIT)) | dns.rcode.FORMERR
        return struct.pack("!HHHHHH", qid, flags, 0, 0, 0, 0)


def _host(client: IPAddress) -> Network:
    return ipaddress.ip_network(client)


def _client_subnet(query: dns.message.Message, client: IPAddress) -> Network:
    """The EDNS Client Subnet of the query (RFC 7871), when it has one, else the client's own address."""
    for option in query.options:
        if isinstance(option, dns.edns.ECSOption) and option.srclen <= (32 if option.family == 1 else 128):
            try:
                return ipaddress.ip_network(f"{option.address}/{option.srclen}", strict=False)
            except ValueError:
                break
    return _host(client)


def _echo_ecs(query: dns.message.Message, response: dns.message.Message, scope: int) -> None:
    """RFC 7871 7.2.1: echo the client's ECS option with the scope the answer is good for."""
    for option in query.options:
        if isinstance(option, dns.edns.ECSOption):
            scope = min(scope, option.srclen)
            response.use_edns(
                0, payload=response.payload, options=[dns.edns.ECSOption(option.address, option.srclen, scope)]
            )
            return
