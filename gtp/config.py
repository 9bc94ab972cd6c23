"""GTP's hyper-parameters: the ONE place they are listed, with their published defaults.

Each field of `GTPConfig` is a hyper-parameter: its type, its default (the published
setting, SPEC.md sections 5 and 6: DeiT-B with P = 8) and its metadata:

  help     one line (the CLI's --help, the app's label)
  symbol   the paper's symbol, e.g. "P", "θ"
  min, max the valid range (inclusive; `min_open=True` excludes `min` itself); a bound
           that depends on the model (P and M below the number of patch tokens) is
           left out here and checked by `make_config`
  step     the step of a slider
  slider   (low, high): the part of the range a slider offers, where the valid range
           is open-ended or wider than worth offering
  choices  the valid values of a string field

Everything else is built from `dataclasses.fields(GTPConfig)`: `PUBLISHED`, the
validation below, the CLI options (`gtp.options`), the sweep's keys and grid
(`gtp.measure.sweep`), the methods' records (`gtp.methods`) and the app's controls.
Adding a field here is enough for it to be validated and offered everywhere; the
method itself (gtp/patch.py) must of course read it.
"""
import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from .functional import GRAPHS, PROPAGATIONS, SELECTIONS


@dataclass(frozen=True)
class GTPConfig:
    """One GTP setting. Resolved for a model by `make_config` (then num_prop is a list
    with one P per block; `gtp.config_of(model)` returns that resolved config)."""

    num_prop: Union[int, list[int]] = field(default=8, metadata=dict(
        help="P, patch tokens propagated per block: one int, or one per block "
             "(a block with no more than P patch tokens left propagates none)",
        symbol="P", min=0, step=1, slider=(0, 64)))
    sparsity: float = field(default=0.6, metadata=dict(
        help="theta, the share of attention entries kept (1 = no sparsification)",
        symbol="θ", min=0.0, min_open=True, max=1.0, step=0.05, slider=(0.05, 1.0)))
    alpha: float = field(default=0.1, metadata=dict(
        help="weight of the propagated features", symbol="α", min=0.0, step=0.01, slider=(0.0, 1.0)))
    graph: str = field(default="mixed", metadata=dict(
        help="token graph", choices=GRAPHS))
    num_neighbours: int = field(default=8, metadata=dict(
        help="M, neighbours per token in the semantic graph", symbol="M", min=1, step=1, slider=(1, 32)))
    selection: str = field(default="mixed_attn_max", metadata=dict(
        help="how the tokens to propagate are scored", choices=SELECTIONS))
    propagation: str = field(default="graph", metadata=dict(
        help="how removed tokens are merged: graph (published), mean or none (pruning)",
        choices=PROPAGATIONS))
    token_scale: bool = field(default=True, metadata=dict(
        help="proportional attention on the token sizes"))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The published setting, name -> value (SPEC.md sections 5 and 6).
PUBLISHED: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(GTPConfig)}


# ------------------------------------------------------------------------ one value
def value_type(f: dataclasses.Field) -> type:
    """The type of one value of field `f`: bool, int, float or str (int for a per-block list)."""
    args = typing.get_args(f.type)
    return args[0] if typing.get_origin(f.type) is Union else f.type


def per_block(f: dataclasses.Field) -> bool:
    """True for a field that may also be given as a list with one value per block (num_prop)."""
    return any(typing.get_origin(a) is list for a in typing.get_args(f.type))


def label(f: dataclasses.Field) -> str:
    """The field's name, with its paper symbol when it has one: "sparsity (θ)"."""
    return f"{f.name} ({f.metadata['symbol']})" if f.metadata.get("symbol") else f.name


def valid_range(f: dataclasses.Field, high: Optional[float] = None) -> str:
    """The valid range of a numeric field, e.g. "in (0, 1]", "in [0, 195]" or ">= 0"."""
    lo, hi = f.metadata.get("min"), f.metadata.get("max") if high is None else high
    is_open = f.metadata.get("min_open", False)
    if lo is not None and hi is not None:
        return f"in {'(' if is_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{'>' if is_open else '>='} {lo:g}"
    return "(any value)" if hi is None else f"<= {hi:g}"


MAX_ECHO_CHARS = 80
"""Longest piece of a bad value an error message repeats (a value may be megabytes long)."""


def cut(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, with an ellipsis where cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: Any, limit: int = MAX_ECHO_CHARS) -> str:
    """`repr(value)` for an error message, cut to `limit` characters with an ellipsis. A huge int
    is described by its length (Python refuses to print one of over 4,300 digits)."""
    if isinstance(value, int) and value.bit_length() > 1000:
        return f"an integer of about {int(value.bit_length() * math.log10(2)):,} digits"
    try:
        text = repr(value)
    except ValueError:  # a huge int inside a list
        text = f"a {type(value).__name__} holding an integer of over 4,300 digits"
    return cut(text, limit)


def check_value(f: dataclasses.Field, value: Any, high: Optional[float] = None, why: str = "") -> Any:
    """One value of field `f` checked (type, choices, range; `high` replaces the field's
    max) and returned as the field's type. ValueError naming the valid values otherwise."""
    kind = value_type(f)
    choices = f.metadata.get("choices")
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {shown(value)}")
        return value
    if kind is bool:
        if not isinstance(value, numbers.Integral) or value not in (0, 1):
            raise ValueError(f"{f.name} must be True or False; got {shown(value)}")
        return bool(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{f.name} must be a string; got {shown(value)}")
        return value
    whole = kind is int
    ok = isinstance(value, numbers.Integral if whole else numbers.Real) and not isinstance(value, bool)
    if ok:
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range: out of every range here
            number = math.inf
        lo, hi = f.metadata.get("min"), f.metadata.get("max") if high is None else high
        ok = (math.isfinite(number)
              and (lo is None or number > lo or (number == lo and not f.metadata.get("min_open")))
              and (hi is None or number <= hi))
    if not ok:
        note = f" ({why})" if why else ""
        raise ValueError(f"{label(f)} must be {'an int' if whole else 'a finite number'} "
                         f"{valid_range(f, high)}{note}; got {shown(value)}")
    return int(value) if whole else float(value)


# ------------------------------------------------------------------ a whole setting
def _field(name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(GTPConfig)}[name]


def _schedule(num_prop: Any, depth: int, num_patches: int) -> list[int]:
    """One P per block from an int or a per-block list; each in [0, patch tokens - 1]."""
    if isinstance(num_prop, bool) or not isinstance(num_prop, (int, list, tuple)):
        raise ValueError(f"num_prop must be an int or a list of {depth} ints; got {shown(num_prop)}")
    schedule = [num_prop] * depth if isinstance(num_prop, int) else list(num_prop)
    if len(schedule) != depth:
        raise ValueError(f"a per-block num_prop needs one entry per block: {depth} entries; got {len(schedule)}")
    why = (f"the model has {num_patches} patch tokens; propagating all of them would leave none")
    return [check_value(_field("num_prop"), p, high=num_patches - 1, why=why) for p in schedule]


def _any_int(f: dataclasses.Field, value: Any) -> int:
    """`value` as an int, unchecked otherwise (a setting its method ignores)."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # None, "abc", inf
        raise ValueError(f"{label(f)} must be an int; got {shown(value)}") from None


def make_config(depth: int, num_patches: int, num_prefix: int, **settings: Any) -> GTPConfig:
    """Check every hyper-parameter (any field of `GTPConfig`, by keyword; the rest keep
    their published value) against a model with `depth` blocks, `num_patches` patch
    tokens and `num_prefix` prefix tokens; returns the resolved config.

    Raises ValueError naming the valid range for anything out of it.
    """
    names = [f.name for f in dataclasses.fields(GTPConfig)]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ValueError(f"unknown GTP setting {cut(', '.join(unknown))}; the settings are {', '.join(names)}")
    values = {**PUBLISHED, **settings}
    resolved: dict[str, Any] = {}
    for f in dataclasses.fields(GTPConfig):
        value = values[f.name]
        if f.name == "num_prop":
            resolved[f.name] = _schedule(value, depth, num_patches)
        elif f.name == "num_neighbours":
            # M is only read by a semantic graph; the spatial graph accepts any value, as it always has.
            semantic = values["graph"] != "spatial"
            resolved[f.name] = check_value(f, value, high=num_patches - 1) if semantic else _any_int(f, value)
        else:
            resolved[f.name] = check_value(f, value)
    if resolved["selection"].startswith("cls_attn") and num_prefix == 0:
        raise ValueError(f"selection {resolved['selection']!r} needs a CLS token and this model has none")
    return GTPConfig(**resolved)


def settings_of(config: Optional[GTPConfig] = None, **overrides: Any) -> dict[str, Any]:
    """The keyword settings of `config` (default: the published one) with `overrides` on top."""
    if config is not None and not isinstance(config, GTPConfig):
        raise TypeError(f"config must be a gtp.GTPConfig; got {type(config).__name__} "
                         "(give hyper-parameters by keyword, e.g. num_prop=8)")
    return {**(PUBLISHED if config is None else config.as_dict()), **overrides}


def effective_num_prop(num_prop: Sequence[int], num_patches: int, propagation: str = "graph") -> list[int]:
    """The P each block really propagates, given the requested per-block schedule.

    A block with no more than P patch tokens left propagates none (SPEC.md section 5),
    so e.g. P = 100 on 196 patch tokens removes 100 in the first block and none after.
    "mean" propagation adds back one average token per block that propagates.
    """
    left, actual = num_patches, []
    for p in num_prop:
        p = p if left > p else 0
        actual.append(p)
        left -= p - (1 if propagation == "mean" and p > 0 else 0)
    return actual


def describe_config(config: GTPConfig) -> str:
    """One line, e.g. "P=8 θ=0.6 α=0.1 graph=mixed M=8 ..." (a per-block P shows as per-block)."""
    parts = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, list):
            value = value[0] if len(set(value)) == 1 else "per-block"
        text = format(value, "g") if isinstance(value, float) else str(value)
        parts.append(f"{f.metadata.get('symbol') or f.name}={text}")
    return " ".join(parts)
