"""A Triton launch's modelled time from its compiled code: trip counts, work per program, waves.

`gtp.measure.compiled` reads what the compiler made (loops, instruction mix, registers, shared
memory); here the loops' trip counts are evaluated from the launch's own arguments, the work of one
program summed over the code's regions, and `gpu_model.derived_seconds` gives the time. Every time
is MODELLED.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from .compiled import Compiled, compile_launches
from .gpu_model import GPU, blocks_per_sm, derived_seconds


_BINARY = {"addi": lambda a, b: a + b, "subi": lambda a, b: a - b, "muli": lambda a, b: a * b,
           "divsi": lambda a, b: int(a / b), "divui": lambda a, b: a // b, "ceildivsi": lambda a, b: -(-a // b),
           "floordivsi": lambda a, b: a // b, "remsi": lambda a, b: int(math.fmod(a, b)), "remui": lambda a, b: a % b,
           "maxsi": max, "minsi": min, "maxui": max, "minui": min, "andi": lambda a, b: a & b,
           "ori": lambda a, b: a | b, "xori": lambda a, b: a ^ b, "shli": lambda a, b: a << b,
           "shrsi": lambda a, b: a >> b, "shrui": lambda a, b: a >> b, "addf": lambda a, b: a + b,
           "mulf": lambda a, b: a * b, "subf": lambda a, b: a - b, "divf": lambda a, b: a / b}
_COMPARE = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "slt": lambda a, b: a < b,
            "sle": lambda a, b: a <= b, "sgt": lambda a, b: a > b, "sge": lambda a, b: a >= b,
            "ult": lambda a, b: a < b, "ule": lambda a, b: a <= b, "ugt": lambda a, b: a > b,
            "uge": lambda a, b: a >= b, "olt": lambda a, b: a < b, "ogt": lambda a, b: a > b,
            "oge": lambda a, b: a >= b, "ole": lambda a, b: a <= b, "oeq": lambda a, b: a == b}


def evaluate(name: str, scalars: dict[str, list], env: dict[str, Any]) -> Any:
    """The value of TTGIR scalar `name` given the launch's arguments by name (`env["args"]`), the program
    id (`env["pid"]`) and enclosing induction variables; KeyError if it reads anything else."""
    if name in env:
        return env[name]
    op, *rest = scalars[name]
    if op == "const":
        return rest[0]
    if op == "param":
        return env["args"][rest[0]]
    if op == "tt.get_program_id":
        return env["pid"]["xyz".index(rest[-1])]
    if op == "tt.get_num_programs":
        return env["grid"]["xyz".index(rest[-1])]
    values = [evaluate(r, scalars, env) for r in rest]
    kind = op.split(".", 1)[1]
    if kind in ("extsi", "extui", "trunci", "index_cast", "sitofp", "fptosi", "bitcast", "extf", "truncf"):
        return values[0]
    if kind == "select":
        return values[1] if values[0] else values[2]
    if kind.startswith("cmp"):
        return _COMPARE[kind.split(".")[1]](*values)
    return _BINARY[kind](*values)


def _reads(name: str, target: str, scalars: dict[str, list]) -> bool:
    """Whether TTGIR scalar `name` depends on `target`."""
    if name == target:
        return True
    entry = scalars.get(name)
    return bool(entry) and entry[0] not in ("const", "param") and any(
        _reads(r, target, scalars) for r in entry[1:] if isinstance(r, str) and r.startswith("%"))


def executions(c: Compiled, args: dict[str, Any], grid: tuple[int, ...]) -> list[float]:
    """How many times each loop's body runs per program, averaged over the grid's programs (bounds
    that read the program id are evaluated for each of up to ~256 programs spread over the grid)."""
    children = {i: [j for j, lp in enumerate(c.loops) if lp.parent == i] for i in range(-1, len(c.loops))}

    def below(i: int) -> list[Loop]:
        return [c.loops[j] for j in children[i]] + [x for j in children[i] for x in below(j)]

    def run(pid: tuple[int, ...]) -> list[float]:
        counts = [0.0] * len(c.loops)

        def walk(parent: int, env: dict, times: float) -> None:
            for i in children[parent]:
                loop = c.loops[i]
                if not all(bool(evaluate(g, c.scalars, env)) == want for g, want in loop.guards):
                    continue
                lower, upper, step = (evaluate(x, c.scalars, env) for x in (loop.lower, loop.upper, loop.step))
                trips = max(0, -(-(upper - lower) // step))
                counts[i] += times * trips
                inner = below(i)
                if any(_reads(x, loop.iv, c.scalars) for lp in inner for x in (lp.lower, lp.upper, lp.step,
                                                                                 *(g for g, _ in lp.guards))):
                    for value in range(lower, upper, step):  # the inner loops read this one's variable
                        walk(i, {**env, loop.iv: value}, times)
                elif trips:
                    walk(i, env, times * trips)
        walk(-1, {"args": args, "pid": pid, "grid": grid}, 1.0)
        return counts

    if not any(v[0] == "tt.get_program_id" for v in c.scalars.values()):
        return run((0, 0, 0))
    full = list(grid) + [1] * (3 - len(grid))
    programs = [(x, y, z) for x in range(full[0]) for y in range(full[1]) for z in range(full[2])]
    sample = programs[::max(1, len(programs) // 256)]
    per = [run(p) for p in sample]
    return [sum(col) / len(sample) for col in zip(*per)]


class DerivedKernel(NamedTuple):
    """One Triton launch as compiled for the GPU, and its derived (modelled) time."""
    kernel: str
    cc: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    blocks_per_sm: int
    programs: int
    seconds: float                   # modelled; nan where the code could not be read (see `note`)
    scope: str
    note: str = ""


def launch_work(c, launch) -> dict:
    """Per program: warp instructions per class, tensor FLOPs, L1 / shared bytes, summed
    over the code's regions, each times the runs of its loop body (`compiled.executions`)."""
    runs = executions(c, launch.args, launch.grid)
    work: dict = {}
    for region, times in [(c.straight, 1.0)] + list(zip(c.loops, runs)):
        for cls, n in region.counts.items():
            work[cls] = work.get(cls, 0.0) + n * times
            work["instructions"] = work.get("instructions", 0.0) + n * times
        work["flops"] = work.get("flops", 0.0) + region.flops * times
        work["bytes"] = work.get("bytes", 0.0) + sum(region.bytes.values()) * times
        work["hmma_flops"] = work.get("hmma_flops", 0.0) + region.hmma_flops * times
    return {k: v * c.num_warps for k, v in work.items()}  # every warp of the program runs the code


def derive(pending: list, events: list, gpu: GPU, nbytes: Callable[[Any], int]) -> list:
    """For each (event index, Launch) of `pending` (its DRAM floor: its tensors' `nbytes`, each once): (index, the event with its derived
    time, its `DerivedKernel`). A kernel whose code cannot be read gets nan and says why."""
    out = []
    launches = [launch for _, launch in pending]
    try:
        results: list = compile_launches(launches, gpu.cc)
    except (ValueError, RuntimeError):  # one at a time: a kernel whose code cannot be read is said, not guessed
        results = []
        for launch in launches:
            try:
                results.append(compile_launches([launch], gpu.cc)[0])
            except (ValueError, RuntimeError) as error:
                results.append(ValueError(str(error).strip().splitlines()[-1]))
    for (index, launch), c in zip(pending, results):
        programs, scope = math.prod(launch.grid), events[index].scope
        dram = float(sum(nbytes(t) for t in launch.args.values() if hasattr(t, "storage_offset")))
        if isinstance(c, ValueError):  # not derived: its tensors moved once is all that is counted
            out.append((index, events[index]._replace(kind="custom", bytes=dram), DerivedKernel(
                launch.kernel.fn.__name__, gpu.cc, 0, 0, 0, 0, programs, math.nan, scope, str(c))))
            continue
        work = launch_work(c, launch)
        blocks = blocks_per_sm(c.registers, c.num_warps, c.shared_bytes, c.cc)
        seconds = derived_seconds(work, programs, c.num_warps, blocks, dram, gpu)
        out.append((index, events[index]._replace(seconds=seconds, flops=work["flops"] * programs, bytes=dram),
                    DerivedKernel(c.kernel, c.cc, c.registers, c.spill_bytes, c.shared_bytes, blocks, programs,
                                  seconds, scope)))
    return out

