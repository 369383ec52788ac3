"""The consistency designs a cluster can run, each with its primary source and what l4emu models of it."""

from __future__ import annotations

from dataclasses import dataclass

from l4emu.cluster._cluster import DESIGN_NAMES
from l4emu.config import CONSISTENCY_DESIGNS

if tuple(CONSISTENCY_DESIGNS) != tuple(DESIGN_NAMES):  # config validates names without loading the cluster
    raise ImportError(f"config.CONSISTENCY_DESIGNS {CONSISTENCY_DESIGNS} != the cluster path's {DESIGN_NAMES}")


@dataclass(frozen=True)
class DesignSpec:
    name: str
    scheduler: str  # what each instance's scheduler is (the design's hash)
    flags: tuple[str, ...]
    per_connection_state: str  # where a connection's real is remembered
    source: str

    @property
    def number(self) -> int:
        return DESIGN_NAMES.index(self.name)


# Katran hashes the 5-tuple: mh-port puts the client's port into Maglev's hash with its address.
_MAGLEV = ("mh", ("mh-port",))
DESIGNS: dict[str, DesignSpec] = {
    spec.name: spec
    for spec in (
        DesignSpec(
            "maglev",
            *_MAGLEV,
            "each instance's table",
            "Maglev NSDI'16 s3.3-3.4; Katran balancer_kern.c: a table per instance, Maglev hash on a miss, "
            "any packet may open an entry, a SYN never reads the table",
        ),
        DesignSpec(
            "maglev-global",
            *_MAGLEV,
            "each instance's table + one global table",
            "Katran issue #155: a global LRU read when an instance misses a non-SYN packet",
        ),
        DesignSpec(
            "rendezvous-second-chance",
            "hrw",
            (),
            "the reals (none in the directors)",
            "GLB director: 2^16 rows of (primary, secondary) by rendezvous order, picked by the source "
            "address; a failed or draining real swapped to secondary; a real forwards a non-SYN packet it "
            "does not know to the secondary",
        ),
        DesignSpec(
            "beamer",
            *_MAGLEV,
            "the reals + one previous owner per bucket",
            "Beamer NSDI'18: stateless muxes, bucket -> server with the bucket's previous server; a server "
            "daisy-chains a packet it does not know to that previous server",
        ),
        DesignSpec(
            "cheetah",
            *_MAGLEV,
            "the client (a cookie in the TCP timestamp)",
            "Cheetah NSDI'20: the chosen server's id in the timestamp cookie; connections whose SYN has no "
            "timestamp fall back to maglev",
        ),
        DesignSpec(
            "jet",
            "hrw",
            ("hrw-port",),
            "each instance's table, only for connections the horizon would take",
            "JET CoNEXT'21: consistent (rendezvous) hashing; track only the connections whose server would "
            "change if the horizon servers (here: reals down or at weight 0) were added",
        ),
        DesignSpec(
            "silkroad-delay",
            *_MAGLEV,
            "each instance's table, written after a delay",
            "SilkRoad SIGCOMM'17 s4: the switch CPU inserts a connection's entry after a delay; until then "
            "its packets follow the current pool (no TransitTable)",
        ),
        DesignSpec(
            "hash",
            "mh",
            (),
            "none",
            "baseline of Cheetah's experiment: 5-tuple hash mod the available reals, no table",
        ),
        DesignSpec(
            "consistent",
            *_MAGLEV,
            "none",
            "baseline of Cheetah's experiment: stateless consistent (Maglev) hashing, no table",
        ),
    )
}
if tuple(DESIGNS) != tuple(DESIGN_NAMES):
    raise ImportError("every design of the cluster path needs a DesignSpec")
