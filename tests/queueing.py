"""Queueing theory, the anchor the emulated servers are held to (Kleinrock, Queueing Systems, vol. 1).

lam: arrivals per second (Poisson), mu: services per second per worker (exponential), c: workers.
"""
from __future__ import annotations

import math


def mm1_response_time(lam: float, mu: float) -> float:
    """Mean time in an M/M/1 system (waiting plus service): 1 / (mu - lam)."""
    assert lam < mu, "an unstable queue has no mean"
    return 1.0 / (mu - lam)


def erlang_c(c: int, lam: float, mu: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (Erlang's C formula), offered load a = lam/mu."""
    a = lam / mu
    assert a < c, "an unstable queue has no steady state"
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def mmc_response_time(c: int, lam: float, mu: float) -> float:
    """Mean time in an M/M/c system: Erlang C / (c mu - lam) waiting, plus 1/mu of service."""
    return erlang_c(c, lam, mu) / (c * mu - lam) + 1.0 / mu
