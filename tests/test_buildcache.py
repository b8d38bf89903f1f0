"""buildcache's prefix rule (moby's isValidParent) as a table: when is the current image a
strict prefix of a cache source, by history entries and diff_ids."""

import pytest

from minidock.buildcache import _is_prefix

A = {"created": "2026-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file in / "}
B = {"created": "2026-01-01T00:00:01Z", "created_by": "/bin/sh -c #(nop)  ENV X=1", "empty_layer": True}
C = {"created": "2026-01-01T00:00:02Z", "created_by": "/bin/sh -c echo hi"}
B_LATER = dict(B, created="2026-02-01T00:00:00Z")

CASES = [
    # (what, parent history, parent diffs, source history, source diffs, prefix?)
    ("scratch is a prefix of any source", [], [], [A], ["d1"], True),
    ("a source without history offers nothing", [], [], [], [], False),
    ("the base image under a longer source", [A], ["d1"], [A, B, C], ["d1", "d2"], True),
    ("two steps in", [A, B], ["d1"], [A, B, C], ["d1", "d2"], True),
    ("the source itself is no strict prefix", [A, B, C], ["d1", "d2"], [A, B, C], ["d1", "d2"], False),
    ("same text, other timestamp", [A, B_LATER], ["d1"], [A, B, C], ["d1", "d2"], False),
    ("another layer under the same history", [A], ["other"], [A, B, C], ["d1", "d2"], False),
    ("more layers than the source", [A], ["d1", "d2", "d3"], [A, B, C], ["d1", "d2"], False),
]


@pytest.mark.parametrize("what,ph,pd,sh,sd,expected", CASES, ids=[c[0] for c in CASES])
def test_prefix_rule(what, ph, pd, sh, sd, expected):
    assert _is_prefix(ph, pd, sh, sd) is expected
