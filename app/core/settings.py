"""The user's settings, built from `gtp.GTPConfig`'s fields (the one list of hyper-parameters).

`hyper_parameters()` reads each field's metadata (help, symbol, min, max, step, choices) and
default; the page makes one control per entry (`app.ui.layout`), and `Settings` holds the values
the handlers receive, as a `GTPConfig` (`settings.config.sparsity`). Adding a field to
`GTPConfig` is enough for it to appear in the app. A slider offers the field's `slider` range
(or `min`..`max`); the values are checked against the model by the library itself
(`app.core.inference.check_settings`), so the app never repeats its rules. Every refusal here is
an `InputError` naming the field.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

import gtp

from .errors import InputError
from .plain import shown

DEFAULT_MODEL = "deit_small_patch16_224"

@dataclass(frozen=True)
class HyperParameter:
    """One GTPConfig field as the app shows it."""
    name: str
    default: Any
    kind: str                      # "int", "float", "bool", "choice" or "text"
    help: str
    symbol: Optional[str] = None
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    choices: tuple = ()

    @property
    def label(self) -> str:
        lead = f"{self.symbol} ({self.name})" if self.symbol else self.name
        return f"{lead}: {self.help}" if self.help else lead

    def parse(self, value: Any) -> Any:
        """A raw value (sliders send floats; the raw API may send anything) as this field's
        type; InputError naming the field otherwise."""
        name = f"{self.name} ({self.symbol})" if self.symbol else self.name
        if self.kind == "bool":
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise InputError(f"{name} must be true or false; got {shown(value)}")
        if self.kind in ("choice", "text"):
            if not isinstance(value, str):
                raise InputError(f"{name} must be text; got {shown(value)}")
            if self.choices and value not in self.choices:
                raise InputError(f"{name} must be one of {', '.join(self.choices)}; got {shown(value)}")
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a number; got {shown(value)}") from None
        except OverflowError:  # a whole number too large for a float
            raise InputError(f"{name} must be a finite number; got {shown(value)}") from None
        if isinstance(value, bool) or not math.isfinite(number):
            raise InputError(f"{name} must be a finite number; got {shown(value)}")
        if self.kind == "int":
            if number != int(number):
                raise InputError(f"{name} must be a whole number; got {shown(value)}")
            return int(number)
        return number


def _published_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.name in gtp.PUBLISHED:  # e.g. num_prop held as a per-block list
        return gtp.PUBLISHED[f.name]
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def hyper_parameters(config_cls: type = gtp.GTPConfig) -> list[HyperParameter]:
    """The app's view of every field of `config_cls`, in declaration order."""
    out = []
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        default = _published_default(f)
        choices = tuple(meta.get("choices") or ())
        if choices:
            kind = "choice"
        elif isinstance(default, bool):
            kind = "bool"
        elif isinstance(default, int):
            kind = "int"
        elif isinstance(default, float):
            kind = "float"
        else:
            kind = "text"
        low, high = meta.get("slider", (meta.get("min"), meta.get("max")))
        out.append(HyperParameter(
            name=f.name, default=default, kind=kind, help=str(meta.get("help", "")),
            symbol=meta.get("symbol"), min=low, max=high,
            step=meta.get("step", 1 if kind == "int" else None), choices=choices))
    return out


def parse_schedule(text: Optional[str]) -> Optional[list[int]]:
    """'8, 8, 4' -> [8, 8, 4]; empty -> None (use the single P). InputError on anything else.

    The length is checked against the model's depth by `gtp.patch`.
    """
    if text is None or not str(text).strip():
        return None
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise InputError(
            f"The per-block schedule must be comma-separated whole numbers, one per block "
            f"(e.g. 8,8,8,8,8,8,8,8,8,8,8,8); got {shown(text)}.") from None


@dataclass(frozen=True)
class Settings:
    """Everything the user chose: the model, an optional weights file, an optional per-block
    schedule of P, and the hyper-parameters (`config`; its num_prop is the single P, which the
    schedule overrides). Frozen and hashable: it keys the caches."""
    model: str = DEFAULT_MODEL
    weights: Optional[str] = None
    schedule: str = ""
    config: gtp.GTPConfig = gtp.GTPConfig()

    def patch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `gtp.patch` (which checks them against the model)."""
        kwargs = self.config.as_dict()
        schedule = parse_schedule(self.schedule)
        if schedule is not None:
            kwargs["num_prop"] = schedule
        return kwargs

    def budget(self, depth: int) -> list[int]:
        """Tokens removed per block by every compared method: the schedule, or P in each of `depth` blocks."""
        schedule = parse_schedule(self.schedule)
        return schedule if schedule is not None else [int(self.config.num_prop)] * depth

    def json(self) -> dict:
        return {**self.config.as_dict(), "schedule": self.schedule}


def make_settings(model: Optional[str] = None, weights: Optional[str] = None, schedule: Optional[str] = "",
                  config_cls: type = gtp.GTPConfig, **raw: Any) -> Settings:
    """Settings from raw values by field name (missing ones: the published default).
    InputError naming the field for a value of the wrong type, or an unknown name."""
    params = {p.name: p for p in hyper_parameters(config_cls)}
    unknown = set(raw) - set(params)
    if unknown:
        raise InputError(f"unknown hyper-parameter(s): {', '.join(sorted(unknown))}")
    values = {}
    for name, p in params.items():
        value = raw.get(name, p.default)
        values[name] = p.default if value is None and p.kind != "text" else p.parse(value)
    if schedule is not None and not isinstance(schedule, str):
        raise InputError(f"the per-block schedule must be text such as '8,8,8'; got {shown(schedule)}")
    parse_schedule(schedule)  # refused now, not inside the model run
    return Settings(model=model or DEFAULT_MODEL, weights=weights or None, schedule=schedule or "",
                    config=config_cls(**values))


PUBLISHED_SETTINGS = make_settings()
