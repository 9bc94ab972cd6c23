"""gtp.config: GTPConfig's fields are the one list of hyper-parameters; validation, PUBLISHED,
the CLI options, the sweep's keys and the baselines' records all follow from them."""
from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

import gtp
from gtp import config as C, methods, options
from gtp.measure import sweep

from conftest import random_model

NAMES = ["num_prop", "sparsity", "alpha", "graph", "num_neighbours", "selection", "propagation", "token_scale"]


def test_fields_are_the_hyper_parameters_with_their_published_defaults():
    fields = dataclasses.fields(gtp.GTPConfig)
    assert [f.name for f in fields] == NAMES
    assert gtp.PUBLISHED == dict(num_prop=8, sparsity=0.6, alpha=0.1, graph="mixed", num_neighbours=8,
                                 selection="mixed_attn_max", propagation="graph", token_scale=True)
    assert gtp.PUBLISHED == {f.name: f.default for f in fields} == gtp.GTPConfig().as_dict()
    for f in fields:
        assert f.metadata["help"]
        if "choices" in f.metadata:
            assert f.default in f.metadata["choices"]
        if "slider" in f.metadata:
            lo, hi = f.metadata["slider"]
            assert C.check_value(f, lo) == lo and C.check_value(f, hi) == hi  # a slider offers valid values
    assert {f.name: f.metadata.get("symbol") for f in fields if f.metadata.get("symbol")} == \
        dict(num_prop="P", sparsity="θ", alpha="α", num_neighbours="M")
    # Everything built from the fields.
    assert sweep.KEY_FIELDS[5:] == tuple(NAMES)
    assert methods.GTP_OPTIONS == tuple(NAMES[1:])
    assert list(methods.describe("tome", 4)) == NAMES
    assert sweep.AXES == ("num_prop", "sparsity", "alpha", "num_neighbours")


@pytest.mark.parametrize("bad, message", [
    (dict(num_prop=196), r"num_prop \(P\) must be an int in \[0, 195\] \(the model has 196 patch tokens"),
    (dict(num_prop=[8] * 11), "12 entries"),
    (dict(num_prop=[8] * 11 + [2.5]), r"\[0, 195\]"),
    (dict(num_prop="8"), "an int or a list of 12 ints"),
    (dict(sparsity=0.0), r"sparsity \(θ\) must be a finite number in \(0, 1\]; got 0.0"),
    (dict(sparsity="0.5"), r"\(0, 1\]"),
    (dict(alpha=float("inf")), ">= 0"),
    (dict(alpha=float("nan")), ">= 0"),
    (dict(num_neighbours=196), r"\[1, 195\]"),
    (dict(num_neighbours=2.0), r"\[1, 195\]"),
    (dict(token_scale="yes"), "True or False"),
    (dict(selection="cls_attn_mean"), "needs a CLS token"),
    (dict(bogus=1), "unknown GTP setting bogus; the settings are num_prop, sparsity"),
])
def test_make_config_names_the_valid_range(bad, message):
    with pytest.raises(ValueError, match=message):
        C.make_config(depth=12, num_patches=196, num_prefix=0, **bad)


def test_numbers_too_large_for_a_float_are_a_user_error():
    """A schedule of 12 ints of 4,000 digits gave OverflowError (float(value)); a huge value is
    never echoed whole."""
    huge = 10**4000
    for bad in (dict(num_prop=[huge] * 12), dict(num_prop=huge), dict(alpha=huge),
                dict(num_neighbours=-huge), dict(graph="spatial", num_neighbours=float("inf"))):
        with pytest.raises(ValueError, match="must be") as info:
            C.make_config(depth=12, num_patches=196, num_prefix=1, **bad)
        assert len(str(info.value)) < 300 and "0000000000" not in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="got an integer of about 4,000 digits"):
        C.make_config(depth=12, num_patches=196, num_prefix=1, num_prop=huge)


def test_bad_values_are_echoed_cut():
    long = "x" * 10**6
    for bad, words in [(dict(graph=long), "graph must be one of"), (dict(num_prop=long), "12 ints; got 'xxx"),
                       (dict(**{long: 1}), "unknown GTP setting xxx"), (dict(token_scale=long), "True or False")]:
        with pytest.raises(ValueError, match=words) as info:
            C.make_config(depth=12, num_patches=196, num_prefix=1, **bad)
        assert len(str(info.value)) < 300 and "xxxx" in str(info.value) and "x…" in str(info.value)
    assert C.shown("x" * 100) == "'" + "x" * 78 + "…" and len(C.shown("x" * 100)) == C.MAX_ECHO_CHARS
    assert C.shown([10**5000]) == "a list holding an integer of over 4,300 digits"
    assert C.shown(0.5) == "0.5"


def test_make_config_resolves_a_setting():
    cfg = C.make_config(depth=3, num_patches=196, num_prefix=1, num_prop=[4, 0, 2], sparsity=1, token_scale=0)
    assert cfg == gtp.GTPConfig(num_prop=[4, 0, 2], sparsity=1.0, alpha=0.1, graph="mixed", num_neighbours=8,
                                selection="mixed_attn_max", propagation="graph", token_scale=False)
    assert isinstance(cfg.sparsity, float) and cfg.token_scale is False
    # M is not read by the spatial graph and is not checked there.
    assert C.make_config(depth=1, num_patches=4, num_prefix=1, num_prop=0, graph="spatial",
                         num_neighbours=0).num_neighbours == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 0.5


def test_patch_takes_a_config_and_keyword_overrides():
    model = random_model("deit_tiny_patch16_224")
    gtp.patch(model, gtp.GTPConfig(num_prop=4, alpha=0.2), sparsity=1.0)
    cfg = gtp.config_of(model)
    assert cfg.num_prop == [4] * 12 and cfg.alpha == 0.2 and cfg.sparsity == 1.0 and cfg.graph == "mixed"
    gtp.patch(model, num_prop=16)  # keywords alone: the rest published, as before
    assert gtp.config_of(model).num_prop == [16] * 12 and gtp.config_of(model).alpha == 0.1
    with pytest.raises(TypeError, match="by keyword"):
        gtp.patch(model, 8)
    with pytest.raises(ValueError, match="unknown GTP setting"):
        gtp.patch(model, num_props=8)


@pytest.mark.parametrize("num_prop, propagation", [(100, "graph"), (64, "mean"), (60, "none"),
                                                   ([0, 150, 40, 10] + [8] * 8, "graph")])
def test_effective_num_prop_is_what_the_blocks_do(num_prop, propagation):
    """A schedule that asks for more than the tokens left: the blocks propagate none, as documented."""
    model = gtp.patch(random_model("deit_tiny_patch16_224"), num_prop=num_prop, propagation=propagation)
    with torch.inference_mode(), gtp.trace(model) as rec:
        model(torch.randn(1, 3, 224, 224))
    actual = C.effective_num_prop(gtp.config_of(model).num_prop, 196, propagation)
    assert actual == [layer.propagated.shape[1] for layer in rec.layers]
    tokens = [197] + rec.tokens_per_block()
    assert actual == [a - b + (propagation == "mean" and a > b) for a, b in zip(tokens[:-1], tokens[1:])]
    assert actual != gtp.config_of(model).num_prop  # these schedules are clamped


def test_effective_num_prop_examples():
    assert C.effective_num_prop([100] * 3, 196) == [100, 0, 0]
    assert C.effective_num_prop([8] * 12, 196) == [8] * 12
    assert C.effective_num_prop([64] * 5, 196, "mean") == [64, 64, 64, 0, 0]  # 196 -> 133 -> 70 -> 7 -> 7


def _config_with_beta() -> type:
    """A copy of GTPConfig with one more field, as a new hyper-parameter would be declared."""
    beta = dataclasses.field(default=0.5, metadata=dict(help="a new weight", symbol="β", min=0.0, max=2.0))
    extra = dataclasses.field(default="a", metadata=dict(help="a new kind", choices=("a", "b")))
    plain = dataclasses.field(default=False, metadata=dict(help="a new switch"))
    fields = [(f.name, f.type, f) for f in dataclasses.fields(gtp.GTPConfig)]
    return dataclasses.make_dataclass("GTPConfigPlus", fields + [("beta", float, beta), ("kind", str, extra),
                                                                 ("switch", bool, plain)], frozen=True)


def test_a_new_field_appears_validated_in_the_cli(capsys):
    config = _config_with_beta()
    parser = argparse.ArgumentParser(prog="gtp")
    options.add_gtp_arguments(parser, config)
    assert "--beta" in parser.format_help() and "a new weight (default 0.5)" in parser.format_help()
    assert "--switch" in parser.format_help()
    assert options.gtp_kwargs(parser.parse_args([]), config) == {
        **gtp.PUBLISHED, "beta": 0.5, "kind": "a", "switch": False}
    kw = options.gtp_kwargs(parser.parse_args(["--beta", "1.5", "--kind", "b", "--switch", "--no-token-scale"]),
                            config)
    assert kw["beta"] == 1.5 and kw["kind"] == "b" and kw["switch"] is True and kw["token_scale"] is False
    for bad, message in [(["--beta", "2.5"], "beta (β) must be a finite number in [0, 2]; got 2.5"),
                         (["--beta", "x"], "beta must be a number; got 'x'"),
                         (["--kind", "c"], "invalid choice: 'c'")]:
        with pytest.raises(SystemExit) as e:
            parser.parse_args(bad)
        assert e.value.code == 2 and message in capsys.readouterr().err
    # The existing fields are checked the same way as they are parsed.
    for bad, message in [(["--sparsity", "0"], "(0, 1]"), (["--alpha", "-1"], ">= 0"),
                         (["--num-prop", "8", "-1"], ">= 0"), (["--num-neighbours", "0"], ">= 1")]:
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
        assert message in capsys.readouterr().err


def test_describe_config():
    cfg = C.make_config(depth=2, num_patches=196, num_prefix=1)
    assert C.describe_config(cfg) == ("P=8 θ=0.6 α=0.1 graph=mixed M=8 selection=mixed_attn_max "
                                      "propagation=graph token_scale=True")
    assert C.describe_config(dataclasses.replace(cfg, num_prop=[8, 4])).startswith("P=per-block θ=0.6")
