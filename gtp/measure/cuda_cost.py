"""What one forward costs on a GPU, modelled without one: kernels, host syncs, bytes, FLOPs, time.

The model runs on FAKE CUDA tensors (`FakeTensorMode`: shapes, dtypes and strides, no data), so
every CUDA branch of timm, GTP and the baselines is taken on a machine with no GPU, under the same
grad mode and CUDA autocast that `gtp.measure.bench` times with (one unlogged warm-up forward,
then the logged one): `no_grad` under autocast, so the weights' bf16 copies made by the warm-up
are reused (under inference mode autocast caches none and every forward casts every weight). A
`TorchDispatchMode` sees each aten operation after composite operations are decomposed (as the
CUDA backend would run them) and turns it into kernels:

  no kernel  views and metadata (`OpOverload.is_view`: view, permute, expand, transpose, t, slice,
             select, (un)squeeze, alias, detach, as_strided, split / unbind / chunk, diagonal,
             lift_fresh), `_unsafe_view`, the empty* allocators; `to` to the dtype and device a
             tensor has returns it and reaches no kernel (`to` is decomposed first);
  one kernel everything else, `_to_copy` included (only a real conversion or copy reaches it),
             and factories that fill (zeros, ones, full, arange, scalar_tensor, *_like);
  SDPA       `scaled_dot_product_attention` is one FlashAttention kernel (bf16 / fp16, no mask, on
             GPUs that have it) or one memory-efficient kernel (fp32 or a mask; plus one kernel
             padding a mask whose last dim is not a multiple of 16); FLOPs from torch's counter;
             a backend's kernel called directly (`_scaled_dot_product_efficient_attention`) too;
  custom     "gtp::" ops: the launches `triton_support.PLANS` says the op makes, compiled for the GPU and
             timed from their code (`compiled`, `kernel_time`): no kernel states its own cost.
             Any other custom op: one kernel moving its tensors.

FLOPs: `torch.utils.flop_counter` for mm / addmm / bmm / baddbmm / convolution / attention, else
a few per output element (`FLOPS_PER_ELEMENT`). Bytes: the storage each kernel reads and writes
(inputs + outputs, a broadcast input counted once; sort / topk / kthvalue read their input
`SELECT_PASSES` times). Host syncs: `_local_scalar_dense` (item), nonzero, masked_select, unique,
bincount, boolean-mask index / index_put, repeat_interleave with tensor repeats, and copies between
the host and the GPU. On fake tensors their data-dependent results are stand-ins (item -> 1, every
mask entry true), so the rest of the forward still runs.

Time: `gtp.measure.gpu_model` (spec table, time model, calibration against published throughput).
Every time this module gives is MODELLED. `python -m gtp cost` prints a table of `estimate`s.
"""
from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException,
                                           FakeTensorMode)
from torch.utils import flop_counter
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .bench import DTYPES
from .fake_autocast import cuda_autocast
from .gpu_model import GPU, GPUS, GemmShape, Kernel, gemm_programs, launch_seconds, modelled_seconds

aten = torch.ops.aten
ELEMENTS_PER_PROGRAM = 1024
SELECT_PASSES = 4      # radix sort / select passes over their input
FLOPS_PER_ELEMENT = {"exp": 4, "log": 4, "gelu": 8, "softmax": 5, "_softmax": 5, "_log_softmax": 5,
                     "native_layer_norm": 8, "rsqrt": 2, "sqrt": 2, "sigmoid": 4, "erf": 8, "tanh": 4,
                     "linalg_vector_norm": 2, "pow": 2, "div": 1}

_GEMMS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
_NO_KERNEL = {aten._unsafe_view, aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty,
              aten.new_empty_strided, aten.lift_fresh, aten.detach, aten.alias, aten.set_, aten.resize_}
_ONE_PROGRAM_PER_SLICE = {aten.kthvalue, aten.median, aten.nanmedian, aten.mode, aten.sort}
_SELECTS = _ONE_PROGRAM_PER_SLICE | {aten.topk}
_WRITES_ONLY = {aten.zeros_like, aten.ones_like, aten.full_like, aten.new_zeros, aten.new_ones, aten.new_full,
                aten.fill_, aten.zero_, aten.copy_, aten.normal_, aten.uniform_, aten.random_}  # 1st arg not read
_SYNC_OPS = {aten._local_scalar_dense, aten.item, aten.nonzero, aten.masked_select, aten.unique_dim,
             aten._unique2, aten.unique_consecutive, aten.bincount}
_SDPA_KERNELS = {aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention,
                 aten._scaled_dot_product_cudnn_attention}  # [B, H, n, d] in, (out, lse, ...) out
_SYNC_OVERLOADS = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def touched_bytes(t: torch.Tensor) -> int:
    """Bytes of storage a kernel reading all of `t` touches: a broadcast (stride 0) dim counts once."""
    if t.numel() == 0:
        return 0
    span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 1)
    return min(t.numel(), span) * t.element_size()


def _gemm_shape(packet, args, out: torch.Tensor, nbytes: float) -> GemmShape:
    """A GEMM's (or a convolution's implicit GEMM's) output and operand bytes (`gpu_model.GemmShape`)."""
    if packet is aten.convolution:  # rows: output pixels; A: the input, B: weight and bias
        a, b = touched_bytes(args[0]), sum(touched_bytes(t) for t in args[1:3] if isinstance(t, torch.Tensor))
        return GemmShape(1, out.numel() // out.shape[1], out.shape[1], a, b, nbytes - a - b)
    first = 1 if packet in (aten.addmm, aten.baddbmm) else 0
    a, b = touched_bytes(args[first]), touched_bytes(args[first + 1])
    batch, rows, cols = out.shape if packet in (aten.bmm, aten.baddbmm) else (1, out.shape[0], out.shape[-1])
    return GemmShape(batch, rows, cols, a, b, nbytes - a - b)


def _argument(func, args, kwargs, name: str, default: Any) -> Any:
    """Argument `name` of an aten call, positional or keyword."""
    for i, a in enumerate(func._schema.arguments):
        if a.name == name:
            return args[i] if i < len(args) else kwargs.get(name, default)
    return default


def _bool_index(func, args) -> bool:
    return func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []) if i is not None)


def _crosses_host(func, args, out) -> bool:
    """A copy between the host and the GPU (pageable memory: the host waits for it)."""
    if func._overloadpacket not in (aten._to_copy, aten.copy_):
        return False
    devices = {t.device.type for t in _tensors((args, out))}
    return "cpu" in devices and "cuda" in devices


def _stand_in(func, args, kwargs):
    """A result for an op whose output depends on data fake tensors do not have: item -> 1,
    every mask entry true (the largest output), so the rest of the forward can be costed."""
    packet = func._overloadpacket
    if packet in (aten._local_scalar_dense, aten.item):
        return True if args[0].dtype == torch.bool else 1.0 if args[0].dtype.is_floating_point else 1
    if packet is aten.nonzero:
        return args[0].new_empty((args[0].numel(), args[0].dim()), dtype=torch.long)
    if packet is aten.masked_select:
        return args[0].new_empty(torch.broadcast_shapes(args[0].shape, args[1].shape).numel())
    if packet in (aten.index_put, aten.index_put_):
        return args[0] if packet is aten.index_put_ else args[0].clone()
    if func is aten.index.Tensor and len([i for i in args[1] if i is not None]) == 1:
        start = next(d for d, i in enumerate(args[1]) if i is not None)
        mask = args[1][start]
        return args[0].new_empty(args[0].shape[:start] + (mask.numel(),) + args[0].shape[start + mask.dim():])
    raise ValueError(f"cuda_cost: {func} has a data-dependent output shape the cost model cannot stand in for")


class CostLog(TorchDispatchMode):
    """Turns every aten operation into kernels, syncs or host-only work (see the module docstring)."""

    def __init__(self, gpu: GPU, dtype: torch.dtype):
        super().__init__()
        self.gpu, self.dtype = gpu, dtype
        self.scope = "stem"
        self.recording = True
        self.events: list[Any] = []   # Kernel, ("sync", op, scope) or ("host", op, scope), in order
        self.uncosted: set[str] = set()
        self.pending: list = []       # (event index, Launch) of the Triton launches to derive
        self.derived: list = []       # their kernel_time.DerivedKernel

    # ------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.scaled_dot_product_attention.default or func._overloadpacket in _SDPA_KERNELS:
            return self._attention(func, args, kwargs)
        if func.namespace == "aten" and torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), "CompositeImplicitAutograd"):
            with self:  # decomposed as the CUDA backend would run it; its parts come back here
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        sync = (func._overloadpacket in _SYNC_OPS or func in _SYNC_OVERLOADS or _bool_index(func, args))
        try:
            out = func(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException):
            out = _stand_in(func, args, kwargs)
        if self.recording and func.namespace != "prim":
            self._record(func, args, kwargs, out, sync or _crosses_host(func, args, out))
        return out

    def _record(self, func, args, kwargs, out, sync: bool) -> None:
        if sync:
            self.events.append(("sync", str(func), self.scope))
        packet = func._overloadpacket
        if packet in (aten._local_scalar_dense, aten.item, *_NO_KERNEL) or func.is_view:
            self.events.append(("host", str(func), self.scope))
            return
        ins = _tensors((args, {k: v for k, v in kwargs.items() if k != "out"}))
        outs = _tensors(out)
        if func.namespace == "aten" and outs and all(t.numel() == 0 for t in outs):
            self.events.append(("host", str(func), self.scope))  # CUDA launches nothing for an empty output
            return
        if packet in _WRITES_ONLY:
            ins = ins[1:]
        nbytes = sum(map(touched_bytes, ins)) * (SELECT_PASSES if packet in _SELECTS else 1)
        nbytes += sum(map(touched_bytes, outs))
        largest = max([t.numel() for t in ins + outs] or [1])
        name = f"{func.namespace}::{func._opname}"
        if func.namespace not in ("aten", "prim"):
            self._custom(name, func, args, kwargs, nbytes, largest)
        elif packet in _GEMMS or packet is aten.convolution:
            flops = flop_counter.flop_registry[packet](*args, **kwargs, out_val=out)
            shape = _gemm_shape(packet, args, out, nbytes)
            self._add(str(func), "gemm", flops, nbytes, gemm_programs(shape.batch, shape.rows, shape.cols),
                      dtype=args[1].dtype, gemm=shape)
        else:
            flops = FLOPS_PER_ELEMENT.get(func._opname, 1) * max([t.numel() for t in outs] or [0])
            if packet in _ONE_PROGRAM_PER_SLICE and args[0].dim() > 0:
                programs = args[0].numel() // max(1, args[0].shape[_argument(func, args, kwargs, "dim", -1)])
            else:
                programs = math.ceil(largest / ELEMENTS_PER_PROGRAM)
            self._add(str(func), "vector", flops, nbytes, programs)

    def _custom(self, name: str, func, args, kwargs, nbytes: float, largest: int) -> None:
        from ..kernels.triton_support import PLANS
        if name not in PLANS or not self.gpu.cc:  # unknown to the model: one kernel moving its tensors
            self.uncosted.add(name)
            return self._add(name, "custom", 0.0, nbytes, math.ceil(largest / ELEMENTS_PER_PROGRAM))
        for launch in PLANS[name](args, kwargs):  # derived after the forward (`derive`)
            self.pending.append((len(self.events), launch))
            self.events.append(Kernel(name, self.scope, "derived", self.dtype, 0.0, 0.0, math.prod(launch.grid)))

    def derive(self) -> None:
        """Compile the Triton launches seen (one batch) and set each one's derived time."""
        from .kernel_time import derive
        for index, kernel, derived in derive(self.pending, self.events, self.gpu, touched_bytes):
            self.events[index] = kernel
            self.derived.append(derived)
            self.uncosted.update([f"{derived.kernel} sm_{derived.cc}: {derived.note}"] if derived.note else [])
        self.pending = []

    def _attention(self, func, args, kwargs):
        """SDPA (`aten.scaled_dot_product_attention`), or a backend's kernel called directly (as
        `gtp.kernels.fused_attention` calls the memory-efficient one for its lse; once priced as an
        elementwise op, too cheap): one attention kernel, FLOPs from torch's counter."""
        q, k, v = args[:3]
        direct = func is not aten.scaled_dot_product_attention.default
        mask = _argument(func, args, kwargs, "attn_bias" if direct else "attn_mask", None)
        recording, self.recording = self.recording, False  # what it decomposes into is not the CUDA kernel
        try:
            out = func(*args, **kwargs)
            # the fused kernels write [B, n, H, d] memory, returned as a [B, H, n, d] view (this
            # copy stands for their layout: it is not a kernel of its own)
            out = out if direct else out.transpose(1, 2).contiguous().transpose(1, 2)
        finally:
            self.recording = recording
        if not self.recording:
            return out
        if direct:
            flash, written = "flash" in func._opname, [t for t in out[:2] if isinstance(t, torch.Tensor)]
            flops = flop_counter.flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        else:
            flash, written = (self.gpu.flash and mask is None and q.dtype in (torch.float16, torch.bfloat16)
                              and q.shape[-1] <= 256), [out]
            flops = flop_counter.sdpa_flop_count(q.shape, k.shape, v.shape)
            if mask is not None and mask.shape[-1] % 16:  # the memory-efficient kernel wants an aligned mask
                self._add("aten::pad (attention mask)", "vector", 0.0, 2 * touched_bytes(mask), 1)
        nbytes = sum(map(touched_bytes, (q, k, v, *written))) + (touched_bytes(mask) if mask is not None else 0)
        rows = sum(map(touched_bytes, (q, *written)))  # what grows with the queries (fewer: `padded_gemms`)
        shape = GemmShape(q.shape[0] * q.shape[1], q.shape[2], 1, rows, nbytes - rows, 0.0, tiled_cols=False)
        self._add("flash attention" if flash else "memory-efficient attention", "attention", flops, nbytes,
                  gemm_programs(shape.batch, shape.rows, 1), dtype=q.dtype, gemm=shape)
        return out

    def _add(self, op: str, kind: str, flops: float, nbytes: float, programs: int, launches: int = 1,
             dtype: Optional[torch.dtype] = None, gemm: Optional[GemmShape] = None) -> None:
        self.events.append(Kernel(op, self.scope, kind, dtype or self.dtype, float(flops), float(nbytes),
                                  max(1, int(programs)), launches, gemm=gemm))

    # ------------------------------------------------------------------ scopes
    @contextlib.contextmanager
    def scoped(self, model: nn.Module) -> Iterator[None]:
        """Attribute ops to "stem", "block i" and "head" with hooks on `model.blocks[i]`."""
        blocks = list(getattr(model, "blocks", []))
        handles = []
        for i, block in enumerate(blocks):
            def enter(module, inputs, i=i):
                self.scope = f"block {i}"

            def leave(module, inputs, output, i=i):
                if i == len(blocks) - 1:  # ops between blocks stay with the block before them
                    self.scope = "head"
            handles += [block.register_forward_pre_hook(enter), block.register_forward_hook(leave)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


class WholeAttention(TorchFunctionMode):
    """Hands `F.scaled_dot_product_attention` whole to `CostLog`: with autograd on (no_grad included) it
    is decomposed before a dispatch mode sees it, into the math fallback, which is not what a GPU runs."""

    def __init__(self, log: CostLog):
        super().__init__()
        self.log = log

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.log._attention(aten.scaled_dot_product_attention.default, args, kwargs)
        return func(*args, **kwargs)


# ---------------------------------------------------------------------- one forward
@dataclass
class Estimate:
    """One forward's cost: counts (kernels, syncs, FLOPs, bytes) and modelled times (`modelled_*`)."""
    label: str
    batch: int
    dtype: str
    gpu: str
    cuda_graphs: bool
    kernels: int                     # launches in the whole forward
    kernels_per_block: float         # mean over the transformer blocks
    syncs: list[str]                 # "op (scope)" of every host sync
    flops: float
    bytes: float
    modelled_s: float                # per forward of the whole batch
    modelled_host_s: float           # host time (eager launches; one graph replay with CUDA graphs)
    modelled_gpu_s: float            # GPU time
    per_scope: dict[str, int] = field(default_factory=dict)   # launches per stem / block i / head
    top_ops: list[tuple[str, int, float]] = field(default_factory=list)  # (op, launches, modelled GPU s)
    uncosted: list[str] = field(default_factory=list)        # custom ops with no launch plan
    derived: list = field(default_factory=list)  # kernel_time.DerivedKernel of every Triton launch

    @property
    def modelled_img_per_s(self) -> float:
        return self.batch / self.modelled_s

    @property
    def capturable(self) -> bool:
        """Whether a CUDA graph can capture the forward (no host sync)."""
        return not self.syncs


def input_size(model: nn.Module) -> tuple[int, int]:
    """(H, W) the model takes."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    return tuple(size) if size else tuple(model.pretrained_cfg["input_size"][1:])


def estimate_module(model: nn.Module, batch: int = 1, dtype: str = "bf16", gpu: str = "h100",
                    cuda_graphs: bool = False, tf32: bool = False, label: str = "",
                    img_size: Optional[tuple[int, int]] = None) -> Estimate:
    """Log one forward of a copy of `model` (any device, meta included: values are never read) on a
    fake CUDA batch [batch, 3, H, W] after one unlogged warm-up forward, as a timed loop runs it."""
    import copy
    spec, torch_dtype = GPUS[gpu], DTYPES[dtype]
    size = img_size or input_size(model)
    log = CostLog(spec, torch_dtype)
    fake = copy.deepcopy(model)  # outside the mode: a fake copy could not be converted in place
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = fake.to_empty(device="cuda").eval()
        x = torch.empty(batch, 3, *size, device="cuda")
        # As `bench.inference`: no_grad under autocast, so the weights' bf16 copies are kept.
        grad_off = torch.inference_mode() if torch_dtype == torch.float32 else torch.no_grad()
        with grad_off, cuda_autocast(torch_dtype), log, WholeAttention(log), log.scoped(fake):
            log.recording = False
            fake(x)
            log.recording, log.scope = True, "stem"
            fake(x)
    log.derive()
    kernels = [e for e in log.events if isinstance(e, Kernel)]
    per_scope: Counter = Counter()
    by_op: dict[str, list] = {}
    for k in kernels:
        per_scope[k.scope] += k.launches
        entry = by_op.setdefault(k.op, [0, 0.0])
        entry[0] += k.launches
        entry[1] += launch_seconds(k, spec, tf32)
    blocks = [n for s, n in per_scope.items() if s.startswith("block")]
    seconds, host, device = modelled_seconds(log.events, spec, tf32, cuda_graphs)
    return Estimate(
        label=label, batch=batch, dtype=dtype, gpu=spec.name, cuda_graphs=cuda_graphs,
        kernels=sum(per_scope.values()), kernels_per_block=sum(blocks) / max(1, len(blocks)),
        syncs=[f"{op} ({scope})" for kind, op, scope in (e for e in log.events if not isinstance(e, Kernel))
               if kind == "sync"],
        flops=sum(k.flops for k in kernels), bytes=sum(k.bytes for k in kernels),
        modelled_s=seconds, modelled_host_s=host, modelled_gpu_s=device, per_scope=dict(per_scope),
        top_ops=sorted(((op, n, t) for op, (n, t) in by_op.items()), key=lambda r: -r[2])[:12],
        uncosted=sorted(log.uncosted), derived=log.derived)


def meta_model(name: str) -> nn.Module:
    """timm model `name` with no storage (random init is never run: costs do not depend on values)."""
    import timm
    from ..models import _CREATE_KWARGS
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown timm model {name!r}")
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **_CREATE_KWARGS.get(name, {})).eval()


def estimate(model: str, method: str = "full", amount: int = 8, batch: int = 1, dtype: str = "bf16",
             gpu: str = "h100", cuda_graphs: bool = False, tf32: bool = False, **options: Any) -> Estimate:
    """The modelled cost of timm model `model` reduced by `method` (`gtp.methods.METHODS`) at
    `amount` tokens per block; `options`: GTP's (sparsity, ...), read by method "gtp" only."""
    from ..methods import apply_method
    net = apply_method(meta_model(model), method, amount, **options)
    return estimate_module(net, batch, dtype, gpu, cuda_graphs, tf32, label=method)
