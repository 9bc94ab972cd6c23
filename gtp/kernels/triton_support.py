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
import inspect
import os
from typing import Any, Callable, Iterator, NamedTuple, Optional

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
# A Triton custom op is one opaque node to a dispatch mode. So that nothing has to take a
# kernel's word for its cost, each op publishes its PLAN: the exact launches its real
# implementation makes, built by the same function from the op's own arguments (fake or
# meta tensors will do). `gtp.measure` compiles each launch for a GPU and reads the cost
# from the compiled code; the op itself runs its plan through `execute`, so the plan and
# what runs cannot differ. Any non-Triton work (an SDPA call, a log) happens outside the
# op, in aten ops a dispatch mode sees on their own.
class Launch(NamedTuple):
    """One Triton kernel launch exactly as the op's implementation makes it."""
    kernel: Any                 # the @triton.jit function
    grid: tuple[int, ...]
    args: dict[str, Any]        # every kernel parameter by name, constexprs included: tensors and Python scalars
    num_warps: int
    num_stages: int


PLANS: dict[str, Callable[[tuple, dict], list[Launch]]] = {}


def register_plan(op_name: str) -> Callable:
    """Decorator: `@register_plan("gtp::fused_attention")` on the function (op args, op kwargs) -> launches."""
    def register(fn: Callable[[tuple, dict], list[Launch]]) -> Callable[[tuple, dict], list[Launch]]:
        PLANS[op_name] = fn
        return fn
    return register


def execute(launches: list[Launch]) -> None:
    """Launch each kernel in order, on the device of its tensors' (the current CUDA device otherwise)."""
    for launch in launches:
        tensor = next((a for a in launch.args.values() if isinstance(a, torch.Tensor)), None)
        on_cuda = tensor is not None and tensor.device.type == "cuda"
        with torch.cuda.device(tensor.device) if on_cuda else contextlib.nullcontext():
            launch.kernel[launch.grid](**launch.args, num_warps=launch.num_warps, num_stages=launch.num_stages)


def bind(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by name (defaults filled in), however a dispatch mode passed them."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def compile_launch(launch: Launch, capability: int = 90) -> Any:
    """Compile a launch's kernel for an NVIDIA GPU of this compute capability (90: H100, 120: RTX Pro
    6000 Blackwell) with Triton's own ptxas: no GPU needed. The kernel is specialised as a launch
    specialises it: constexprs, integers equal to 1, integers divisible by 16 and pointers 16-byte aligned
    (PyTorch's allocations).
    Returns Triton's compiled kernel (`.asm["sass"]`, `.metadata.shared`; see `cubin_resources`)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = launch.kernel
    signature, constants, attrs = {}, {}, {}
    for index, param in enumerate(fn.params):
        name, value = param.name, launch.args[param.name]
        if param.is_constexpr or (type(value) is int and value == 1):
            signature[name], constants[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_DTYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"
    source = ASTSource(fn, signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                          options=dict(num_warps=launch.num_warps, num_stages=launch.num_stages))


def resources(compiled: Any) -> dict[str, int]:
    """What ptxas gave a compiled kernel, read from its cubin with the cuobjdump Triton ships:
    registers per thread, spill (local memory) bytes per thread, shared memory bytes per block."""
    import re
    import subprocess
    import tempfile
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    field = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
    return dict(registers=field["REG"], spills=field["LOCAL"] + field["STACK"],
                shared=field["SHARED"] + compiled.metadata.shared)


_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
                  torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}
