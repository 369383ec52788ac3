"""Clients' DNS caches around a site failure: how long after it their requests still go to the failed site.

A site fails at time 0; before it the GSLB answers with the failed site, after it with another. Each
client asks its resolver (one cache shared by the resolver's clients, RFC 1034's TTL counting down) and
keeps the answer itself: most clients for what is left of the TTL, a share (`linger_share`) an extra
exponential time past it (browsers and runtimes that pin an answer), a share (`stale_share`) until
`stale_cap_s` (RFC 8767 serve-stale's cap: 7 days), past any failure the model looks at.

Requests are a Poisson process per client, simulated in time order with one seeded generator (the
cost is per request, a heap of the clients' next requests). The defaults reproduce Flavel, Mani and
Maltz (IEEE LANMAN 2014): with a 20 s TTL, 90% of requests switched within 60 s and 2% were still
stale after 15 minutes (tests/test_gslb_caching.py holds it within 2 points).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence

from l4emu.gslb.config import CacheModel

OBEY, LINGER, STALE = 0, 1, 2
CHECKPOINTS_S = (10, 20, 30, 60, 120, 300, 600, 900)
WINDOW_S = 10.0  # requests within this window around a checkpoint make its share
MOVED_SHARES = (0.5, 0.9, 0.99)
WARMUP_TTLS = 5  # the caches run this many TTLs (and linger means) before the failure, to be warm


def switchover(model: CacheModel, ttl: float, seed: int, checkpoints: Sequence[float] = CHECKPOINTS_S) -> dict:
    """Simulate one failure; returns the share of requests still stale around each checkpoint and when
    50/90/99% of the clients first got the new answer."""
    rng = random.Random(seed)
    horizon = max(checkpoints) + WINDOW_S / 2
    warmup = WARMUP_TTLS * max(ttl, model.linger_s, model.request_interval_s)
    kinds = cache_kinds(rng, model, model.clients)
    resolver_of = [rng.randrange(model.resolvers) for _ in range(model.clients)]
    resolver_expires = [-math.inf] * model.resolvers
    resolver_old = [True] * model.resolvers  # the answer each resolver holds names the failed site
    client_expires = [-math.inf] * model.clients
    client_old = [True] * model.clients
    moved_at: list[float | None] = [None] * model.clients
    rate = 1 / model.request_interval_s
    heap = [(-warmup + rng.expovariate(rate), c) for c in range(model.clients)]
    heapq.heapify(heap)
    windows = [[0, 0] for _ in checkpoints]  # requests, stale ones
    while heap:
        t, c = heapq.heappop(heap)
        if t > horizon:
            break
        if t >= client_expires[c]:
            r = resolver_of[c]
            if t >= resolver_expires[r]:
                resolver_expires[r], resolver_old[r] = t + ttl, t < 0
            client_old[c] = resolver_old[r]
            left = resolver_expires[r] - t
            client_expires[c] = t + hold(kinds[c], left, rng, model)
        if t >= 0:
            if not client_old[c] and moved_at[c] is None:
                moved_at[c] = t
            for k, point in enumerate(checkpoints):
                if abs(t - point) <= WINDOW_S / 2:
                    windows[k][0] += 1
                    windows[k][1] += client_old[c]
        heapq.heappush(heap, (t + rng.expovariate(rate), c))
    return {
        "ttl_s": ttl,
        "clients": model.clients,
        "resolvers": model.resolvers,
        "seed": seed,
        "linger_share": model.linger_share,
        "linger_s": model.linger_s,
        "stale_share": model.stale_share,
        "stale_cap_s": model.stale_cap_s,
        "request_interval_s": model.request_interval_s,
        "stale_requests": [
            {"after_s": point, "requests": n, "share": round(stale / n, 6) if n else None}
            for point, (n, stale) in zip(checkpoints, windows, strict=True)
        ],
        "clients_moved_within_s": _moved(moved_at),
    }


def cache_kinds(rng: random.Random, model: CacheModel, clients: int) -> list[int]:
    """Each share of the clients exactly (rounded), in a seeded order: the shares are the model's
    parameters, not something to draw around."""
    stale, linger = round(model.stale_share * clients), round(model.linger_share * clients)
    kinds = [STALE] * stale + [LINGER] * linger + [OBEY] * (clients - stale - linger)
    rng.shuffle(kinds)
    return kinds


def hold(kind: int, left: float, rng: random.Random, model: CacheModel) -> float:
    """How long a client keeps an answer that has `left` seconds of TTL."""
    if kind == STALE:
        return model.stale_cap_s
    if kind == LINGER:
        return left + rng.expovariate(1 / model.linger_s)
    return left


def _moved(moved_at: list[float | None]) -> dict[str, float | None]:
    times = sorted(t for t in moved_at if t is not None)
    out: dict[str, float | None] = {}
    for share in MOVED_SHARES:
        needed = math.ceil(share * len(moved_at))
        out[f"{round(share * 100)}%"] = round(times[needed - 1], 3) if needed and needed <= len(times) else None
    return out
