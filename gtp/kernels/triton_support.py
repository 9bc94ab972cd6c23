"""Where GTP's Triton kernels run: on CUDA tensors, and on CPU tensors under Triton's interpreter.

The fused GPU path (`triton_attention`, `triton_tokens`) is written in Triton. On a GPU it
compiles to CUDA kernels. Without one, `TRITON_INTERPRET=1` (set before Triton itself is
imported, which timm does through torch._dynamo; `tests/conftest.py` does so where CUDA is
absent) runs the same kernels on CPU tensors, slowly but exactly, so CI checks them. On the CPU the eager
path stays the numba one: the interpreted kernels are taken there only when a test asks,
with `on_cpu()`.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional

import torch

_on_cpu = False  # set by `on_cpu()`: the interpreted kernels also take CPU tensors
_disabled: Optional[str] = None  # why the kernels failed to build here, once they have
_checks_on_cpu = False  # set by `self_checks_on_cpu()`: the first-use checks also run interpreted (tests)
STATUS: dict[str, str] = {}  # op -> "checked" or "off: <why>", once its first use has decided (`gtp.self_check`)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether Triton is installed (it ships with PyTorch's CUDA builds on Linux)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton's interpreter is on (`TRITON_INTERPRET=1`): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") in ("1", "true", "True")


def runs_on(t: torch.Tensor) -> bool:
    """Whether the Triton kernels take tensor `t`: CUDA tensors (real or fake), or CPU tensors
    inside `on_cpu()` under the interpreter."""
    if not available() or _disabled is not None:
        return False
    if t.device.type == "cuda":
        return True
    return _on_cpu and t.device.type == "cpu" and interpreting()


def disable(reason: str) -> None:
    """Stop using the Triton kernels in this process (a kernel failed to build or launch)."""
    global _disabled
    _disabled = reason


def disabled() -> Optional[str]:
    """Why the Triton kernels are off in this process, or None while they are on."""
    return _disabled


def op_off(op: str) -> Optional[str]:
    """Why fused op `op` ("gtp::fused_attention", ...) is off in this process, or None."""
    state = STATUS.get(op, "")
    return state[len("off: "):] if state.startswith("off: ") else None


def status_line() -> str:
    """One line for `bench`, `cost`, the app and the API: each fused op checked, off (and why), or not yet used."""
    if not STATUS:
        return "GTP Triton kernels: not used in this process yet"
    return "GTP Triton kernels: " + "; ".join(f"{op.split('::')[-1]} {state}" for op, state in sorted(STATUS.items()))


def checks_on_cpu() -> bool:
    """Whether the first-use checks run on CPU tensors too (under the interpreter, for tests)."""
    return _checks_on_cpu


@contextlib.contextmanager
def self_checks_on_cpu() -> Iterator[None]:
    """Inside this block the first-use checks (`gtp.self_check`) also run on interpreted CPU kernels."""
    global _checks_on_cpu
    before, _checks_on_cpu = _checks_on_cpu, True
    try:
        yield
    finally:
        _checks_on_cpu = before


@contextlib.contextmanager
def on_cpu() -> Iterator[None]:
    """Run the Triton kernels on CPU tensors inside this block (needs `TRITON_INTERPRET=1`)."""
    global _on_cpu
    if not interpreting():
        raise RuntimeError("the Triton kernels run on CPU tensors only under TRITON_INTERPRET=1")
    before, _on_cpu = _on_cpu, True
    try:
        yield
    finally:
        _on_cpu = before


# ------------------------------------------------------------------ launch plans
# A Triton custom op is one opaque node to a dispatch mode. So that its GPU cost can be derived
# from the code the compiler produces (`gtp.measure.compiled`), never declared, each op says how
# it LAUNCHES: `PLANS["gtp::name"](args, kwargs)` takes the op's own arguments (real, fake or meta
# tensors) and returns the `Launch`es its implementation makes, which `execute` runs.
class Launch(NamedTuple):
    """One Triton kernel launch exactly as the op's implementation makes it."""
    kernel: Any                 # the @triton.jit function
    grid: tuple[int, ...]
    args: dict[str, Any]        # every kernel parameter by name, constexprs included: tensors and Python scalars
    num_warps: int
    num_stages: int
    options: Mapping[str, Any] = {}  # other compile options (enable_fp_fusion), as given to the launch


PLANS: dict[str, Callable[[tuple, dict], list[Launch]]] = {}


def register_plan(op_name: str) -> Callable:
    """Decorator: `@register_plan("gtp::fused_attention")` on the op's plan function."""
    def register(fn: Callable[[tuple, dict], list[Launch]]) -> Callable[[tuple, dict], list[Launch]]:
        PLANS[op_name] = fn
        return fn
    return register


def execute(launches: list[Launch]) -> None:
    """Run the launches in order (on the device of their first tensor argument)."""
    for launch in launches:
        device = next((a.device for a in launch.args.values() if isinstance(a, torch.Tensor)), None)
        guard = torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext()
        names = launch.kernel.arg_names
        with guard:
            launch.kernel[launch.grid](*(launch.args[n] for n in names), num_warps=launch.num_warps,
                                       num_stages=launch.num_stages, **launch.options)
