"""Scheduler base classes: built-ins run in C without the GIL; Python plugins get a trampoline.

A built-in subclasses Scheduler and returns C function pointers from hook(). A plugin written in
Python subclasses PythonScheduler and implements pick(); the datapath then takes the GIL only for
new flows of that service.
"""
import ipaddress

from cpython.ref cimport PyObject
from l4emu.datapath._types cimport Real
from l4emu.datapath._wire cimport IPPROTO_TCP


cdef class Scheduler:
    """What the datapath calls when a packet misses the connection table."""
    name = "?"

    cdef SchedulerHook hook(self):
        raise NotImplementedError(f"{type(self).__name__} has no C hook")


ctypedef struct RoundRobinState:
    uint32_t next


cdef int32_t rr_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                     uint64_t now_ns) noexcept nogil:
    """The next available real after the last one picked (IPVS rr)."""
    cdef RoundRobinState* s = <RoundRobinState*>state
    cdef uint32_t k, i
    for k in range(n):
        i = (s.next + k) % n
        if available(&reals[i]):
            s.next = (i + 1) % n
            return i
    return -1


cdef class RoundRobin(Scheduler):
    """rr: every available real in turn."""
    name = "rr"
    cdef RoundRobinState state

    cdef SchedulerHook hook(self):
        cdef SchedulerHook h
        h.pick = rr_pick
        h.ended = NULL
        h.changed = NULL
        h.state = &self.state
        return h


cdef int32_t python_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                         uint64_t now_ns) noexcept nogil:
    with gil:
        try:
            return (<PythonScheduler><PyObject*>state)._call_pick(reals, n, key, now_ns)
        except BaseException as exc:                  # a plugin bug must not kill the datapath
            (<PythonScheduler><PyObject*>state).errors.append(exc)
            return -1


cdef void python_ended(void* state, const Real* reals, uint32_t n, uint32_t index) noexcept nogil:
    with gil:
        try:
            (<PythonScheduler><PyObject*>state).flow_ended(index)
        except BaseException as exc:
            (<PythonScheduler><PyObject*>state).errors.append(exc)


cdef void python_changed(void* state, const Real* reals, uint32_t n) noexcept nogil:
    with gil:
        try:
            (<PythonScheduler><PyObject*>state).reals_changed()
        except BaseException as exc:
            (<PythonScheduler><PyObject*>state).errors.append(exc)


cdef object address_text(const uint8_t* a, uint8_t family):
    return str(ipaddress.ip_address(bytes(a[:4] if family == 4 else a[:16])))


cdef class PythonScheduler(Scheduler):
    """Base for schedulers written in Python: implement pick(flow, reals) -> index or None.

    `flow` is a dict with client, client_port, vip, vip_port, protocol and time_ns; `reals` is a
    list of dicts with address, port, weight, available, active, inactive and conns, in config order.
    """
    cdef readonly list errors

    def __init__(self):
        self.errors = []

    cdef SchedulerHook hook(self):
        cdef SchedulerHook h
        h.pick = python_pick
        h.ended = python_ended
        h.changed = python_changed
        h.state = <void*>self
        return h

    cdef int32_t _call_pick(self, const Real* reals, uint32_t n, const PacketKey* key, uint64_t now_ns) except? -2:
        flow = {
            "client": address_text(key.src, key.family), "client_port": key.sport,
            "vip": address_text(key.dst, key.family), "vip_port": key.dport,
            "protocol": "tcp" if key.proto == IPPROTO_TCP else "udp", "time_ns": now_ns,
        }
        views = [{
            "address": address_text(reals[i].addr, reals[i].family), "port": reals[i].port,
            "weight": reals[i].weight, "available": available(&reals[i]),
            "active": reals[i].active, "inactive": reals[i].inactive,
            "conns": reals[i].conns,
        } for i in range(n)]
        choice = self.pick(flow, views)
        if choice is None:
            return -1
        if not 0 <= choice < n:
            raise ValueError(f"{type(self).__name__}.pick returned {choice!r}, not an index below {n}")
        return choice

    def pick(self, flow, reals):
        raise NotImplementedError

    def flow_ended(self, index):
        """Called when a flow of reals[index] leaves the table; override if the policy cares."""

    def reals_changed(self):
        """Called when a real's weight or state changed; the next pick() sees the new values."""
