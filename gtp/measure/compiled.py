"""What a Triton launch compiles to for a GPU we do not have: registers, shared memory, instruction mix, trip counts.

`gtp.kernels.triton_support.PLANS` says which kernels an op launches and with which arguments
(`Launch`); no kernel states its own cost. This module compiles each launch for a target (sm_90:
H100; sm_120: RTX Pro 6000 Blackwell) with Triton's own compiler and reads what came out:

  resources  registers per thread (`cuobjdump -res-usage`), spill bytes (the widths of the STL
             instructions in the SASS: what ptxas reports as "bytes spill stores"), shared memory
             per block (Triton's dynamic allocation plus the cubin's static one);
  mix        every SASS instruction (`cuobjdump -sass`), in a class (`CLASSES`), attributed to the
             innermost loop that holds it: a loop is a backward branch, nested by address range;
  trips      the `scf.for` loops of the TTGIR (the last IR before LLVM, software pipelining done),
             each matched to the SASS loops that run it: in order where the nesting is the same,
             else by the source lines of the loop body's own instructions (ptxas may split a loop
             into an unrolled copy and a remainder; sm_120's branch back may carry a body line); a
             loop not found is an error, not a guess (`_map_loops`). Their bounds are evaluated
             from the launch's own argument values (and program id where a bound reads it), and
             `scf.if` guards likewise (a loop under a false guard runs 0 times).

So the work of one program is sum(class count of a loop body x the times that body runs): padding,
masked lanes, recomputed tiles and every non-matmul instruction included, because they are in the
code. `gtp.measure.kernel_time` evaluates the trip counts and `gpu_model.derived_seconds` gives a time.
Compiles are cached in this process per (kernel, specialisation, target) and each cubin is read once
(launches differing only in unspecialised values share it); Triton's disk cache speeds a second process.
Under `TRITON_INTERPRET=1` (the tests on a CPU) the kernels in this process are interpreted, so the
compile runs in a subprocess without it (`python -m gtp.measure.compiled`, JSON in and out).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

CLASSES = ("tensor", "fp32", "int", "mufu", "convert", "shuffle", "global", "shared", "local", "barrier",
           "uniform", "control")
_OPCODES = {
    "fp32": ("FADD", "FMUL", "FFMA", "FFMA2", "FADD2", "FMUL2", "HADD2", "HMUL2", "HFMA2", "FSWZADD", "DADD", "DMUL",
             "DFMA"),
    "int": ("IADD3", "IADD", "IMAD", "LOP3", "LOP", "SHF", "SHL", "SHR", "LEA", "ISETP", "FSETP", "FMNMX", "IMNMX",
            "VIMNMX", "FSEL", "SEL", "PRMT", "IABS", "POPC", "FLO", "BREV", "PLOP3", "P2R", "R2P", "VOTE", "MOV",
            "FCHK", "IDP", "HSETP2", "HMNMX2", "ISCADD", "VABSDIFF", "LOP32I", "IADD32I", "FADD32I", "FMUL32I"),
    "mufu": ("MUFU",), "shuffle": ("SHFL",), "local": ("LDL", "STL"),
    "convert": ("F2F", "F2FP", "I2F", "F2I", "I2FP", "F2IP", "FRND", "I2I"),
    "global": ("LDG", "STG", "LDGSTS", "RED", "ATOM", "ATOMG", "REDG", "UTMALDG", "UTMASTG", "UBLKCP"),
    "shared": ("LDS", "STS", "LDSM", "STSM", "ATOMS", "REDS"),
    "barrier": ("BAR", "SYNCS", "WARPGROUP", "MEMBAR", "ARRIVES", "DEPBAR", "WARPSYNC", "ERRBAR", "CCTL"),
    "tensor": ("HGMMA", "HMMA", "IMMA", "QGMMA", "IGMMA", "OMMA", "QMMA"),
}
_CLASS_OF = {op: c for c, ops in _OPCODES.items() for op in ops}
_BIN = os.path.join(os.path.dirname(__import__("importlib").util.find_spec("triton").origin or "."),
                    "backends", "nvidia", "bin") if __import__("importlib").util.find_spec("triton") else ""


@dataclass
class Loop:
    """One loop: its parent (-1: none), bounds (TTGIR SSA names), guards and its body's own instructions."""
    parent: int
    iv: str
    lower: str
    upper: str
    step: str
    guards: list[tuple[str, bool]]           # (condition, the value it must have) of enclosing scf.if
    line: int = 0                            # the kernel source line of its `for`
    lines: list[int] = field(default_factory=list)           # source lines of its body's own ops (TTGIR)
    counts: dict[str, float] = field(default_factory=dict)   # class -> warp instructions in the body
    flops: float = 0.0                       # tensor-core FLOPs per warp per pass over the body
    hmma_flops: float = 0.0                  # the part of them by mma.sync (HMMA)
    bytes: dict[str, float] = field(default_factory=dict)    # global / shared / local bytes per warp per pass


@dataclass
class Compiled:
    """One launch compiled for one target: resources and the code's loops (see the module docstring)."""
    kernel: str
    cc: int
    num_warps: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    straight: Loop                           # instructions outside every loop (parent/bounds unused)
    loops: list[Loop]
    scalars: dict[str, list]                 # TTGIR scalar definitions: name -> [op, operands...]


# ------------------------------------------------------------------ compiling (needs a JITFunction)
def describe(args: dict[str, Any]) -> dict[str, Any]:
    """A launch's arguments as JSON: a tensor becomes its dtype and 16-byte alignment (what Triton
    specialises on), a scalar stays itself."""
    out = {}
    for name, a in args.items():
        if isinstance(a, torch.Tensor):
            aligned = (a.storage_offset() * a.element_size()) % 16 == 0
            out[name] = {"tensor": str(a.dtype).replace("torch.", ""), "aligned": aligned}
        else:
            out[name] = a
    return out


_TRITON_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64", "int64": "i64",
                 "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


def _specialise(kernel, described: dict[str, Any], cc: int):
    """(signature, constexprs, attrs) as Triton's JIT would build them for these arguments."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl
    backend = CUDABackend(GPUTarget("cuda", cc, 32))
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(kernel.params):
        a = described[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[(i,)] = "constexpr", a
            continue
        if isinstance(a, dict):
            kind, spec = "*" + _TRITON_TYPES[a["tensor"]], "D" if a["aligned"] else ""
        elif a is None:
            kind, spec = "constexpr", None
        else:
            kind, spec = native_specialize_impl(backend, a, False, not p.do_not_specialize,
                                                not p.do_not_specialize_on_alignment)
        if kind == "constexpr":
            signature[p.name], constexprs[(i,)] = "constexpr", spec if a is not None else None
        else:
            signature[p.name] = kind
            if spec and "D" in spec:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _compile_here(spec: dict) -> Compiled:
    import importlib
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    kernel = getattr(importlib.import_module(spec["module"]), spec["name"])
    signature, constexprs, attrs = _specialise(kernel, spec["args"], spec["cc"])
    source = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    options = dict(num_warps=spec["num_warps"], num_stages=spec["num_stages"], **spec["options"])
    compiled = triton.compile(source, target=GPUTarget("cuda", spec["cc"], 32), options=options)
    args = (compiled.asm["cubin"], compiled.asm["ttgir"], spec["name"], spec["cc"], spec["num_warps"],
            compiled.metadata.shared)
    key = hashlib.sha256(repr(args).encode()).hexdigest()
    _READ[key] = _READ.get(key) or read(*args)   # one read per cubin (see the module docstring)
    return copy.deepcopy(_READ[key])


_READ: dict[str, Compiled] = {}
_CACHE: dict[str, Compiled] = {}


def compile_launches(launches: list, cc: int) -> list[Compiled]:
    """Each `triton_support.Launch` compiled for compute capability `cc` (90, 120), cached per
    specialisation; one subprocess for all the missing ones under the interpreter."""
    specs = []
    for launch in launches:
        fn = launch.kernel.fn
        specs.append(dict(module=fn.__module__, name=fn.__name__, args=describe(launch.args), cc=cc,
                          num_warps=launch.num_warps, num_stages=launch.num_stages,
                          options=dict(getattr(launch, "options", {}))))
    keys = [json.dumps(s, sort_keys=True, default=str) for s in specs]
    missing = {k: s for k, s in zip(keys, specs) if k not in _CACHE}
    if missing:
        interpreted = os.environ.get("TRITON_INTERPRET", "0") in ("1", "true", "True")
        results = _compile_elsewhere(list(missing.values())) if interpreted else [
            _compile_here(s) for s in missing.values()]
        _CACHE.update(zip(missing, results))
    return [_CACHE[k] for k in keys]


def _compile_elsewhere(specs: list[dict]) -> list[Compiled]:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "gtp.measure.compiled"], input=json.dumps(specs, default=str),
                          capture_output=True, text=True, env=env, cwd=root, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling the Triton kernels failed: {proc.stderr[-2000:]}")
    return [_from_json(c) for c in json.loads(proc.stdout)]


def _from_json(c: dict) -> Compiled:
    loops = [Loop(**{**loop, "guards": [tuple(g) for g in loop["guards"]]}) for loop in [c["straight"], *c["loops"]]]
    return Compiled(**{**c, "straight": loops[0], "loops": loops[1:]})


# ------------------------------------------------------------------ reading the cubin and the TTGIR
def _tool(name: str, cubin: bytes, *flags: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([os.path.join(_BIN, name), *flags, f.name], capture_output=True, text=True,
                              check=True).stdout


def _sass(cubin: bytes) -> list[tuple[int, str, int]]:
    """(address, instruction text, source line) of every SASS instruction (`nvdisasm -g`: Triton has
    ptxas keep line info), branch labels replaced by their addresses."""
    rows, labels, line = [], {}, 0
    for text in _tool("nvdisasm", cubin, "-c", "-g").splitlines():
        m = re.match(r"\s*//## File .*?, line (\d+)", text)
        if m:
            line = int(m.group(1))
            continue
        m = re.match(r"^(\.L_x_\d+):", text.strip())
        if m:
            labels[m.group(1)] = len(rows)
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", text)
        if m:
            rows.append((int(m.group(1), 16), m.group(2), line))
    address = {label: rows[i][0] if i < len(rows) else rows[-1][0] + 16 for label, i in labels.items()}
    return [(a, re.sub(r"`\((\.L_x_\d+)\)", lambda m: hex(address[m.group(1)]), t), ln) for a, t, ln in rows]


def _opcode(text: str) -> str:
    return re.sub(r"^@!?U?P[T0-9]+\s+", "", text).split()[0]


def _tensor_flops(op: str) -> float:
    """FLOPs per warp of one tensor-core instruction, from its shape: HGMMA.64xNx16 is one warpgroup's
    (four warps') m64 nN k16; HMMA.16816 is one warp's m16 n8 k16."""
    m = re.match(r"[A-Z]+GMMA\.(\d+)x(\d+)x(\d+)", op)
    if m:
        return 2 * int(m.group(1)) * int(m.group(2)) * int(m.group(3)) / 4
    m = re.match(r"[A-Z]MMA\.(\d\d)(\d)(\d+)", op)
    if m:
        return 2 * int(m.group(1)) * int(m.group(2)) * int(m.group(3))
    return 0.0


def _access_bytes(op: str) -> float:
    """Bytes one warp moves with a load or store (all 32 lanes: a masked lane still costs its slot)."""
    if op.startswith("LDSM") or op.startswith("STSM"):
        return 128 * (4 if ".4" in op else 2 if ".2" in op else 1)
    m = re.search(r"\.(128|64|32|U16|S16|U8|S8)\b", op)
    width = {"128": 16, "64": 8, "32": 4, "U16": 2, "S16": 2, "U8": 1, "S8": 1}.get(m.group(1) if m else "", 4)
    return 32 * width


def _classify(op: str) -> str:
    base = op.split(".")[0]
    if base in _CLASS_OF:
        return _CLASS_OF[base]
    return "uniform" if base.startswith("U") else "control"


# A branch and its target: `BRA 0x..`, `@P0 BRA 0x..`, and the uniform-predicate form ptxas emits for
# sm_120 (`BRA.U !UP0, 0x..`); not `BRA.DIV` (a warp's detour when its lanes diverge, not a loop).
_BACK = re.compile(r"\bBRA(?:\.(?!DIV\b)\w+)*\s+(?:[!@\w]+,\s+)?0x([0-9a-f]+)")
_FOR = re.compile(r"scf\.for\s+(%[\w.#]+)\s*=\s*(%[\w.#]+)\s+to\s+(%[\w.#]+)\s+step\s+(%[\w.#]+)")
_IF = re.compile(r"scf\.if\s+(%[\w.#]+)")
_DEF = re.compile(r"^\s*(%[\w.#]+)(?::\d+)?\s*=\s*(arith\.\w+|tt\.get_program_id|tt\.get_num_programs)\s+(.*)$")


def _line_of(match, locs: dict[str, str]) -> int:
    """The source line a TTGIR location names (through names, call sites and fusions)."""
    seen, ref = 0, match.group(1) if match else None
    while ref in locs and seen < 50:
        body, seen = locs[ref], seen + 1
        direct = re.match(r'"[^"]*":(\d+):\d+', body)
        if direct:
            return int(direct.group(1))
        inner = re.search(r"#loc\d*", body)
        ref = inner.group(0) if inner else None
    return 0


def _ttgir(ttgir: str) -> tuple[list[Loop], dict[str, list], list[str]]:
    """The TTGIR's loops in order (parents, bounds, guards), its scalar definitions, its parameters."""
    body = ttgir[ttgir.index("tt.func public"):]
    params = re.findall(r"(%[\w.#]+):", body.splitlines()[0])
    locs = dict(re.findall(r"^(#loc\d*) = loc\((.*)\)$", ttgir, re.M))
    loops, scalars, frames = [], {}, []   # frames: ("for", index) | ("if", cond, branch) | ("other",)
    for line in body.splitlines()[1:]:
        code = re.sub(r"\s*loc\(.*$", "", line.strip())
        m = _DEF.match(code)
        if m and "tensor<" not in code:
            name, op, rest = m.groups()
            rest = rest.split(" : ")[0]
            if op == "arith.constant":
                value = rest.strip()
                scalars[name] = ["const", {"true": 1, "false": 0}.get(value, None) if value in ("true", "false")
                                 else float(value) if "." in value or "e" in value else int(value)]
            else:
                predicate = re.match(r"(\w+),\s*(.*)", rest) if op in ("arith.cmpi", "arith.cmpf") else None
                operands = re.findall(r"%[\w.#]+", predicate.group(2) if predicate else rest)
                axis = re.search(r"\b([xyz])\b", rest) if op.startswith("tt.") else None
                scalars[name] = [op if not predicate else f"{op}.{predicate.group(1)}", *operands] + (
                    [axis.group(1)] if axis else [])
        inner = next((fr[1] for fr in reversed(frames) if fr[0] == "for"), -1)
        op_line = _line_of(re.search(r"loc\((#loc\d*)\)", line), locs)
        if inner >= 0 and op_line and op_line not in loops[inner].lines:
            loops[inner].lines.append(op_line)
        opens, closes = code.count("{"), code.count("}")
        if code.startswith("}") and "else" in code and frames and frames[-1][0] == "if":
            frames[-1] = ("if", frames[-1][1], False)
        elif opens > closes:
            f, i = _FOR.search(code), _IF.search(code)
            if f:
                parent = next((fr[1] for fr in reversed(frames) if fr[0] == "for"), -1)
                guards = [(fr[1], fr[2]) for fr in frames if fr[0] == "if"]
                frames.append(("for", len(loops)))
                loops.append(Loop(parent, *f.groups(), guards))
            elif i:
                frames.append(("if", i.group(1), True))
            else:
                frames.append(("other",))
        elif closes > opens and frames:
            frame = frames.pop()
            if frame[0] == "for":
                loops[frame[1]].line = _line_of(re.search(r"loc\((#loc\d*)\)", line), locs)
    return loops, scalars, params


def _map_loops(spans: list, sass_parents: list[int], sass_lines: list[Counter], loops: list[Loop],
               constant: list[bool], name: str, cc: int) -> list[Optional[int]]:
    """For each SASS loop, the TTGIR loop it runs (None: a copy that another SASS loop stands for).

    Same nesting: in order. Otherwise by source lines: each SASS loop goes to the TTGIR loop whose
    body's own ops name the most of its own instructions' lines (ptxas unrolls a loop of runtime
    trip count into an unrolled copy and a remainder, and its backward branch may carry a line of
    the body rather than the `for`). Where several SASS loops run one TTGIR loop, the copy with no
    loop inside it and the fewest instructions, one iteration, stands for it. A TTGIR loop no SASS
    loop runs was unrolled whole by ptxas (its instructions are counted where they stand), which
    only a loop of constant bounds can be: any other is an error, not a guess."""
    if [lp.parent for lp in loops] == sass_parents:
        return list(range(len(loops)))
    owner: list[Optional[int]] = [None] * len(spans)
    copies: dict[int, list[int]] = {}
    for i, counts in enumerate(sass_lines):
        overlap = [(sum(n for ln, n in counts.items() if ln in lp.lines), lp.line == spans[i][2], j)
                   for j, lp in enumerate(loops)]
        best = max(overlap, default=(0, False, -1))
        if best[0] == 0 and not best[1]:
            raise ValueError(f"{name} sm_{cc}: the SASS loop at {spans[i][0]:#x} (line {spans[i][2]}) runs no "
                             f"loop of the TTGIR: its trip count cannot be mapped")
        copies.setdefault(best[2], []).append(i)
    for j, ids in copies.items():
        leaves = [i for i in ids if i not in sass_parents] or ids
        owner[min(leaves, key=lambda i: spans[i][1] - spans[i][0])] = j
    unmapped = [lp.line for j, lp in enumerate(loops) if j not in copies and not constant[j]]
    if unmapped:
        raise ValueError(f"{name} sm_{cc}: no SASS loop found for the loops at lines {unmapped}")
    return owner


def read(cubin: bytes, ttgir: str, name: str, cc: int, num_warps: int, dynamic_shared: int) -> Compiled:
    """A `Compiled` from a cubin and its TTGIR (see the module docstring)."""
    usage = _tool("cuobjdump", cubin, "-res-usage")
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    static_shared = int(re.search(r"SHARED:(\d+)", usage).group(1))
    sass = _sass(cubin)
    heads: dict[int, tuple[int, int]] = {}   # loop head address -> (its last backward branch, that branch's line)
    for address, text, line in sass:
        m = _BACK.search(text)
        if m and int(m.group(1), 16) < address:
            head = int(m.group(1), 16)
            if address > heads.get(head, (0, 0))[0]:
                heads[head] = (address, line)
    spans = sorted((h, e, ln) for h, (e, ln) in heads.items())
    sass_parents = [max((j for j, (h, e, _) in enumerate(spans[:i]) if h <= spans[i][0] and spans[i][1] <= e),
                        default=-1) for i in range(len(spans))]
    loops, scalars, params = _ttgir(ttgir)
    innermost = [max((i for i, (h, e, _) in enumerate(spans) if h <= address <= e), default=-1)
                 for address, _, _ in sass]
    sass_lines = [Counter(ln for (_, _, ln), k in zip(sass, innermost) if k == i) for i in range(len(spans))]
    constant = [all(scalars.get(x, [""])[0] == "const" for x in (lp.lower, lp.upper, lp.step)) for lp in loops]
    owner = _map_loops(spans, sass_parents, sass_lines, loops, constant, name, cc)
    straight = Loop(-1, "", "", "", "", [])
    spill = 0
    for (address, text, _), inner in zip(sass, innermost):
        op = _opcode(text)
        if inner >= 0 and owner[inner] is None:
            continue  # an unrolled copy of a loop whose one-iteration copy stands for it
        region = loops[owner[inner]] if inner >= 0 else straight
        cls = _classify(op)
        region.counts[cls] = region.counts.get(cls, 0) + 1
        if cls == "tensor":
            region.flops += _tensor_flops(op)
            region.hmma_flops += _tensor_flops(op) if op.startswith("HMMA") else 0.0
        elif cls in ("global", "shared", "local"):
            region.bytes[cls] = region.bytes.get(cls, 0) + _access_bytes(op)
        if op.startswith("STL"):
            spill += _access_bytes(op) // 32
    scalars.update({p: ["param", p[1:]] for p in params})
    return Compiled(name, cc, num_warps, registers, spill, dynamic_shared + static_shared, straight, loops, scalars)


if __name__ == "__main__":  # compile the specs given as JSON on stdin; print the results as JSON
    print(json.dumps([asdict(_compile_here(s)) for s in json.loads(sys.stdin.read())]))
