"""The emulated path's shortcuts give what the plain code gave: the RFC 1071 sum four bytes at a time,
and the hosts' initial sequence numbers drawn in C from a copy of Python's Mersenne Twister."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from l4emu.hosts._engine import isn_draws
from l4emu.testing._drivers import ones_sum


def reference_sum(data: bytes, acc: int) -> int:
    """RFC 1071 two bytes at a time (big-endian words, odd tail padded), folded to 16 bits."""
    if len(data) % 2:
        data += b"\0"
    total = acc + sum(int.from_bytes(data[k : k + 2], "big") for k in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1600), st.integers(0, 0x7FFFFFFF))
def test_the_sum_is_rfc_1071s(data, acc):
    assert ones_sum(data, acc) == reference_sum(data, acc)


def test_the_sum_keeps_zero_apart_from_all_ones():
    """0x0000 and 0xFFFF are one value in one's complement, but a checksum tells them apart."""
    assert ones_sum(b"") == 0 and ones_sum(bytes(64)) == 0
    assert ones_sum(b"\xff" * 64) == 0xFFFF and ones_sum(b"\xff\xfe\x00\x01") == 0xFFFF
    assert ones_sum(b"\x80" * 7, 0x7FFFFFFF) == reference_sum(b"\x80" * 7, 0x7FFFFFFF)


def test_isns_are_the_ones_python_would_draw():
    for seed in (0, 1, 7, 2**64 - 1):
        rng = random.Random(seed)
        rng.getrandbits(5)  # a state in the middle of a block of 624 words
        before = rng.getstate()
        twin = random.Random()
        twin.setstate(before)
        assert isn_draws(rng, 2000) == [twin.getrandbits(32) for _ in range(2000)]  # past three blocks
        assert rng.getstate() == before  # a copy of its state is drawn from, not the Random
