"""gtp.measure.compiled: which SASS loop runs which TTGIR loop, on hand-made listings (no compile).

The cost model multiplies each loop body's instructions by its trip count, so a SASS loop given to
the wrong TTGIR loop, or a loop not found, gives a wrong time: these cases are what ptxas emits
for sm_90 and sm_120 (the kernels themselves are read in tests/test_triton_tokens.py and
tests/test_cuda_cost.py).
"""
from __future__ import annotations

from collections import Counter

import pytest

from gtp.measure.compiled import _BACK, Loop, _map_loops


def loop(parent: int, line: int, lines: list[int]) -> Loop:
    return Loop(parent, "%iv", "%lo", "%hi", "%step", [], line=line, lines=lines)


@pytest.mark.parametrize("text, target", [("@P6 BRA 0x1d50", "1d50"), ("BRA.U !UP0, 0x3290", "3290"),
                                          ("@P0 BRA.U UP1, 0x500", "500"), ("BRA.DIV UR4, 0x1230", None)])
def test_back_branches_of_both_targets_are_read(text, target):
    """sm_90 branches on a predicate register; sm_120 often on a uniform one (BRA.U); BRA.DIV is
    a divergence detour, never a loop."""
    m = _BACK.search(text)
    assert (m.group(1) if m else None) == target


def test_an_unrolled_loop_and_its_remainder_run_one_ttgir_loop():
    """sm_120's `for h in range(1, H)` (line 64, body lines 65-70): ptxas made an unrolled copy and
    a one-iteration remainder, each branching back from line 70; the remainder stands for the loop."""
    spans = [(0x500, 0xa40, 70), (0xd70, 0xef0, 70)]          # (head, back branch, its line)
    lines = [Counter({65: 20, 66: 20, 70: 40}), Counter({65: 5, 66: 5, 70: 10})]
    owner = _map_loops(spans, [-1, -1], lines, [loop(-1, 64, [65, 66, 70])], [False], "k", 120)
    assert owner == [None, 0]


def test_nested_loops_go_by_their_own_lines():
    """Outer loop (line 10, body 11-12) around an inner one (line 13, body 14) that ptxas split in
    two: each SASS loop goes to the TTGIR loop whose own ops name its instructions' lines."""
    ttgir = [loop(-1, 10, [11, 12]), loop(0, 13, [14])]
    spans = [(0x100, 0x900, 12), (0x200, 0x400, 14), (0x500, 0x600, 14)]
    lines = [Counter({11: 8, 12: 3}), Counter({14: 30}), Counter({14: 9})]
    assert _map_loops(spans, [-1, 0, 0], lines, ttgir, [False, False], "k", 90) == [0, None, 1]


def test_same_nesting_maps_in_order():
    ttgir = [loop(-1, 10, [11]), loop(-1, 20, [21])]
    spans = [(0x100, 0x200, 11), (0x300, 0x400, 21)]
    assert _map_loops(spans, [-1, -1], [Counter({11: 1}), Counter({21: 1})], ttgir, [False] * 2, "k", 90) == [0, 1]


def test_a_loop_not_found_is_an_error_unless_ptxas_could_unroll_it_whole():
    """A TTGIR loop of runtime bounds with no SASS loop: not derived (never guessed); of constant
    bounds: unrolled whole, its instructions counted where they stand."""
    ttgir = [loop(-1, 10, [11]), loop(-1, 20, [21])]
    spans = [(0x100, 0x200, 11), (0x180, 0x1c0, 11)]  # nested in SASS, not in the TTGIR: by lines
    lines = [Counter({11: 4}), Counter({11: 2})]
    with pytest.raises(ValueError, match="no SASS loop found for the loops at lines \\[20\\]"):
        _map_loops(spans, [-1, 0], lines, ttgir, [False, False], "k", 120)
    assert _map_loops(spans, [-1, 0], lines, ttgir, [False, True], "k", 120) == [None, 0]
    with pytest.raises(ValueError, match="runs no loop of the TTGIR"):
        _map_loops([(0x100, 0x200, 99)], [-1], [Counter({99: 3})], [ttgir[0], loop(0, 20, [21])], [False] * 2, "k", 90)
