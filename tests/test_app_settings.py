"""Settings and controls built from GTPConfig's fields (app/core/settings.py, app/ui/layout.py)."""
from __future__ import annotations

import dataclasses

import gradio as gr
import pytest

import gtp
from app.core.settings import Settings, hyper_parameters, make_settings, parse_schedule
from app.ui.layout import settings_controls
from app.core.errors import InputError


def test_every_config_field_has_a_control_with_the_published_default():
    with gr.Blocks():
        controls = settings_controls()
    assert list(controls) == [f.name for f in dataclasses.fields(gtp.GTPConfig)]
    for name, value in gtp.PUBLISHED.items():
        assert controls[name].value == value, name
    assert isinstance(controls["token_scale"], gr.Checkbox)
    assert isinstance(controls["graph"], gr.Dropdown) and "mixed" in [c[1] for c in controls["graph"].choices]
    assert isinstance(controls["num_prop"], gr.Slider) and controls["num_prop"].step == 1


def test_a_new_config_field_appears_in_the_app_and_is_validated():
    extended = dataclasses.make_dataclass(
        "ExtendedConfig",
        [("temperature", float, dataclasses.field(
            default=0.5, metadata={"help": "softmax temperature", "symbol": "τ", "min": 0.1, "max": 2.0,
                                   "step": 0.1})),
         ("kernel", str, dataclasses.field(default="fast", metadata={"help": "which kernel",
                                                                     "choices": ("fast", "exact")}))],
        bases=(gtp.GTPConfig,), frozen=True)
    with gr.Blocks():
        controls = settings_controls(extended)
    assert isinstance(controls["temperature"], gr.Slider)
    assert controls["temperature"].minimum == 0.1 and controls["temperature"].maximum == 2.0
    assert controls["temperature"].value == 0.5 and "τ" in controls["temperature"].label
    assert isinstance(controls["kernel"], gr.Dropdown)
    settings = make_settings(config_cls=extended, temperature="1.5", kernel="exact")
    assert settings.config.temperature == 1.5 and settings.config.kernel == "exact"
    with pytest.raises(InputError, match="temperature"):
        make_settings(config_cls=extended, temperature="hot")
    with pytest.raises(InputError, match="kernel must be one of"):
        make_settings(config_cls=extended, kernel="slow")


def test_make_settings_checks_types_and_names():
    s = make_settings("deit_tiny_patch16_224", num_prop=4.0, sparsity="0.5", token_scale=False)
    assert s.config.num_prop == 4 and isinstance(s.config.num_prop, int) and s.config.sparsity == 0.5
    assert s.config.token_scale is False
    assert hash(s) == hash(make_settings("deit_tiny_patch16_224", num_prop=4, sparsity=0.5, token_scale=False))
    for bad, message in [(dict(num_prop=2.5), "whole number"), (dict(num_prop="x"), "must be a number"),
                         (dict(alpha=float("nan")), "finite"), (dict(token_scale="yes"), "true or false"),
                         (dict(graph="ring"), "must be one of"), (dict(bogus=1), "unknown"),
                         (dict(schedule="8, x"), "comma-separated")]:
        with pytest.raises(InputError, match=message):
            make_settings(**bad)


def test_parse_schedule():
    assert parse_schedule("") is None and parse_schedule(None) is None
    assert parse_schedule(" 8, 8 ,4 ") == [8, 8, 4]
    with pytest.raises(InputError, match="comma-separated"):
        parse_schedule("8, x")
    assert Settings(schedule="1,2").patch_kwargs()["num_prop"] == [1, 2]
    assert make_settings(schedule="1,2").patch_kwargs()["num_prop"] == [1, 2]


def test_metadata_falls_back_where_missing():
    by_name = {p.name: p for p in hyper_parameters()}
    assert by_name["num_prop"].kind == "int" and by_name["num_prop"].symbol == "P"
    assert by_name["sparsity"].kind == "float" and by_name["sparsity"].max == 1.0
    assert by_name["selection"].choices and by_name["selection"].default == "mixed_attn_max"


def test_refusals_repeat_values_short_and_messages_are_bounded():
    """A value sent to the API can be a megabyte or a number of thousands of digits: a refusal
    repeats it cut short, and every message is one bounded line naming no server folder."""
    from app.core import limits
    from app.core.errors import for_person
    from app.core.plain import shown
    with pytest.raises(InputError, match="must be a finite number; got a whole number of about 401 digits"):
        make_settings(num_prop=10**400)
    with pytest.raises(InputError) as info:
        make_settings(schedule="x" * 2**20)
    assert "comma-separated whole numbers" in str(info.value) and len(str(info.value)) < 200
    with pytest.raises(InputError) as info:
        make_settings(graph="g" * 2**20)
    assert "must be one of" in str(info.value) and len(str(info.value)) < 200
    message = for_person("could not read /srv/app/x/w.pth:\n value " + "9" * 5000 + " then " + "y" * 2**20)
    assert "\n" not in message and len(message) <= limits.MAX_MESSAGE_CHARS and "/srv" not in message
    assert message.startswith("could not read w.pth: value (a number of 5,000 digits) then yyy")
    assert shown(10**5000) == "a whole number of about 5,001 digits" and "\u202e" not in shown("a\u202eb")
