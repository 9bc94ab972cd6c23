"""The first-use check of each fused op (`gtp.self_check`), on the CPU under Triton's interpreter.

A kernel made wrong on purpose (a launch that zeroes more entries than asked, a selection that
cannot launch) must be caught by the check, switch THAT op to the PyTorch path with a warning that
says why, leave the other ops on, and be visible in `triton_support.status_line()`.
"""
from __future__ import annotations

import pytest
import torch

from gtp import functional as G
from gtp import self_check, steps
from gtp.kernels import triton_support

pytestmark = pytest.mark.skipif(not triton_support.interpreting(), reason="the interpreted kernels need "
                                "TRITON_INTERPRET=1 (tests/conftest.py sets it where CUDA is absent)")


@pytest.fixture
def fresh(monkeypatch):
    """No op checked yet in this process; checks run on interpreted CPU kernels."""
    monkeypatch.setattr(triton_support, "STATUS", {})
    with triton_support.on_cpu(), triton_support.self_checks_on_cpu():
        yield


def qkv(n=21, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for _ in range(3))
    return q, k, v, torch.rand(1, n, generator=g) + 0.5


def test_correct_kernels_pass_their_check_once(fresh, recwarn):
    q, k, v, size = qkv()
    first = steps.attend(q, k, v, size, 0.6, 0.3, "statistics")
    assert triton_support.STATUS == {"gtp::fused_attention": "checked"}
    steps.attend(q, k, v, size, 0.6, 0.3, "statistics")  # not checked again
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    ref = G.attention(q, k, v, size, 0.6, 0.3, statistics=True)
    assert torch.allclose(first.out, ref.out, atol=1e-5)
    assert "fused_attention checked" in triton_support.status_line()


def test_a_wrong_attention_kernel_is_caught_and_switched_off(fresh, monkeypatch):
    from gtp.kernels import fused_attention as FA
    launches = FA._fused_launches

    def wrong(q, k, v, bias, scale, num_zero, *rest):  # its launches zero 40 more entries per head than asked
        return launches(q, k, v, bias, scale, num_zero + 40, *rest)
    monkeypatch.setattr(FA, "_fused_launches", wrong)
    q, k, v, size = qkv()
    with pytest.warns(RuntimeWarning, match=r"fused gtp::fused_attention is off .*zeroed entries differ"):
        got = steps.attend(q, k, v, size, 0.6, 0.3, "statistics")
    ref = G.attention(q, k, v, size, 0.6, 0.3, statistics=True)
    assert torch.equal(got.out, ref.out) and torch.equal(got.statistics[1], ref.statistics[1])  # the PyTorch path
    assert triton_support.op_off("gtp::fused_attention").startswith("mismatch")
    assert "fused_attention off: mismatch" in triton_support.status_line()


def test_a_wrong_theta_one_statistics_kernel_is_caught(fresh, monkeypatch):
    """theta = 1 untraced runs another kernel (`triton_statistics`): the check covers it too."""
    from gtp.kernels import triton_statistics
    launches = triton_statistics.statistics_launches

    def wrong(q, k, bias, lse, scale):  # logits 1% too large
        return launches(q, k, bias, lse, scale * 1.01)
    monkeypatch.setattr(triton_statistics, "statistics_launches", wrong)
    q, k, v, size = qkv()
    with pytest.warns(RuntimeWarning, match=r"fused gtp::fused_attention is off .*at theta = 1"):
        got = steps.attend(q, k, v, size, 1.0, 0.3, "statistics")
    ref = G.attention(q, k, v, size, 1.0, 0.3, statistics=True)
    assert torch.equal(got.statistics[1], ref.statistics[1])  # the PyTorch path
    assert triton_support.op_off("gtp::fused_attention").startswith("mismatch")


def test_a_selection_that_cannot_launch_is_switched_off_alone(fresh, monkeypatch):
    from gtp.kernels import triton_tokens

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image for this GPU")
    monkeypatch.setattr(triton_tokens, "_select_launches", broken)
    q, k, v, size = qkv()
    attended = steps.attend(q, k, v, size, 0.6, 0.3, "statistics")
    ids = torch.arange(20).repeat(1, 1)
    with pytest.warns(RuntimeWarning, match="select_tokens is off .*RuntimeError: no kernel image"):
        choice = steps.choose(attended, ids, 1, "mixed_attn_max", 5)
    score, _, _ = G.selection_scores(attended, 1, "mixed_attn_max")
    prop, keep = G.split_tokens(score, 5)
    assert torch.equal(choice.prop, prop) and torch.equal(choice.keep, keep)
    assert triton_support.STATUS["gtp::fused_attention"] == "checked"  # the other op stays on
    assert triton_support.op_off("gtp::select_tokens").startswith("build or launch failure")


def test_the_large_batch_plan_is_checked(monkeypatch):
    """On a GPU the check also runs the plan of large batches (`attention_plan._wide`); here the interpreter
    runs it on 4 image x head pairs: right, it passes; zeroing 40 more entries per head, it is caught."""
    from gtp.kernels import attention_plan, fused_attention as FA
    monkeypatch.setattr(attention_plan, "_wide", lambda *args: True)
    device = torch.device("cpu")
    assert self_check.check_large_batch_attention(device, pairs=4) is None
    launches = FA._fused_launches

    def wrong(q, k, v, bias, scale, num_zero, *rest):
        return launches(q, k, v, bias, scale, num_zero + 40, *rest)
    monkeypatch.setattr(FA, "_fused_launches", wrong)
    assert self_check.check_large_batch_attention(device, pairs=4).startswith("mismatch: the diagonal")
