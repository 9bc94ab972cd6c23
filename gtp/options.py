"""Command-line options that several commands share, built from `GTPConfig`'s fields.

`gtp/cli.py` assembles the commands on top of this module; the commands
(`gtp.measure.bench`, `gtp.measure.evaluate`, `gtp.measure.sweep`) take their GTP, model and
data options from here, so nothing imports the CLI back.

A field `name` becomes `--name-with-dashes`; a bool field that defaults to True becomes
`--no-name` (e.g. `--no-token-scale`), one that defaults to False `--name`; a per-block
field (num_prop) takes one value or one per block. Values are checked against the
field's metadata as they are parsed (`gtp.config.check_value`), so a bad value ends
with argparse's one-line error; bounds that depend on the model are checked by `gtp.patch`.
"""
from __future__ import annotations

import argparse
import dataclasses
import unicodedata
from typing import Any, Callable

from .config import GTPConfig, check_value, per_block, value_type


def option_name(f: dataclasses.Field) -> str:
    """The option of field `f`: "--num-prop", or "--no-token-scale" for a bool that defaults to True."""
    dashed = f.name.replace("_", "-")
    return f"--no-{dashed}" if value_type(f) is bool and f.default else f"--{dashed}"


def metavar(f: dataclasses.Field) -> str:
    """The paper symbol in ASCII capitals (P, THETA, ALPHA, M), else the field's name in capitals."""
    symbol = f.metadata.get("symbol", "")
    if not symbol:
        return f.name.upper()
    return symbol.upper() if symbol.isascii() else unicodedata.name(symbol[0]).split()[-1]


def parse_value(f: dataclasses.Field) -> Callable[[str], Any]:
    """The argparse `type` of field `f`: text -> value, checked against the field's range."""
    kind = value_type(f)

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{f.name} must be {'an int' if kind is int else 'a number'}; got {text!r}") from None
        try:
            return check_value(f, value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = kind.__name__  # argparse names the type in "invalid <type> value" messages
    return parse


def add_field_option(group: Any, f: dataclasses.Field, many: bool = False, default: Any = None) -> None:
    """Add field `f` as an option to an argparse parser or group.

    many: take a list of values (a sweep's search axis), with `default` a list.
    """
    kind, help_text = value_type(f), f.metadata["help"]
    if kind is bool:
        group.add_argument(option_name(f), dest=f.name, action="store_false" if f.default else "store_true",
                           help=f"turn off: {help_text}" if f.default else help_text)
        return
    default = f.default if default is None else default
    choices = f.metadata.get("choices")
    kwargs: dict[str, Any] = dict(dest=f.name, default=default)
    if choices is not None:
        kwargs.update(choices=list(choices))
    else:
        kwargs.update(type=parse_value(f), metavar=metavar(f))
    if many or per_block(f):
        kwargs.update(nargs="+")
        if not many:
            kwargs["default"] = [default]
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    if many:
        help_text = f"values to try; {help_text}"
    group.add_argument(option_name(f), help=f"{help_text} (default {shown})", **kwargs)


def add_gtp_arguments(parser: argparse.ArgumentParser, config: type = GTPConfig, many: tuple[str, ...] = ()) -> None:
    """One option per field of `config` (a dataclass like `GTPConfig`); defaults: the published setting.

    many: fields that take a list of values to try (`python -m gtp cost --sparsity 1 0.6`)."""
    group = parser.add_argument_group("GTP hyper-parameters (defaults: the published setting)")
    for f in dataclasses.fields(config):
        add_field_option(group, f, many=f.name in many, default=[f.default] if f.name in many else None)


def gtp_kwargs(args: argparse.Namespace, config: type = GTPConfig) -> dict[str, Any]:
    """The keyword arguments of `gtp.patch` from the options of `add_gtp_arguments`
    (a per-block option given one value becomes that value)."""
    kwargs = {}
    for f in dataclasses.fields(config):
        value = getattr(args, f.name)
        if per_block(f):
            value = value[0] if len(value) == 1 else list(value)
        kwargs[f.name] = value
    return kwargs


def add_model_arguments(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """--model, --weights (and --device)."""
    from .models import SUPPORTED_MODELS
    parser.add_argument("--model", default="deit_small_patch16_224", metavar="NAME",
                        help="one of: " + ", ".join(SUPPORTED_MODELS) + " (default deit_small_patch16_224)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="local .safetensors/.pth weights (default: local cache, hub, else random)")
    if device:
        parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --labels, --limit, --batch-size, --workers, --no-progress (eval and sweep)."""
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="image folder: class subfolders (wnid, index or class name), or flat "
                             "(labelled by --labels, else unlabelled)")
    parser.add_argument("--labels", default=None, metavar="FILE",
                        help="labels of a flat folder: LOC_val_solution.csv or 'NAME LABEL' lines")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="use N images (a seeded random subset)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
