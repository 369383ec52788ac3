"""Every malformed frame of the catalogue ends as its counted drop or passes; none crashes."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Harness
from l4emu.switch import Switch
from malformed import CATALOGUE, well_formed_variants


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
def test_catalogue_case(harness, switch, case):
    verdict, detail, out = harness.one(case.frame, linktype=case.linktype)
    if case.expect == "pass":
        assert verdict != "drop"
    else:
        assert verdict == "drop" and switch.stats()["dropped"] == {case.expect.split(":", 1)[1]: 1}
        assert out == case.frame                      # a dropped packet is never half rewritten


def test_well_formed_variants_are_translated(harness):
    results = harness.run([c.frame for c in well_formed_variants() if c.linktype == 1])
    assert results and all(v in ("new", "forward", "reply") for v, _, _ in results)


@pytest.mark.parametrize("cut", range(0, 80))
def test_every_prefix_of_a_good_frame_is_handled(cut):
    """A frame cut at every length (snapped or lying), on a fresh switch each time."""
    frame = [c for c in well_formed_variants() if c.linktype == 1][0].frame
    harness = Harness(Switch.from_config(None, seed=1))
    verdict, _, _ = harness.one(frame[:cut])
    assert verdict in ("drop", "pass", "new")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=st.binary(max_size=200), linktype=st.sampled_from([0, 1, 12, 101, 108, 113, 276, 999]))
def test_any_bytes_are_counted(harness, switch, frame, linktype):
    before = switch.stats()["packets"]
    verdict, _, _ = harness.one(frame, linktype=linktype)
    stats = switch.stats()
    assert stats["packets"] == before + 1
    assert stats["packets"] == stats["new"] + stats["forward"] + stats["reply"] + stats["answer"] + stats["passed"] + stats["dropped_total"]
