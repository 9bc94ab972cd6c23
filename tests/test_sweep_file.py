"""app.core.sweep_file: reading an uploaded sweep file: tolerant of formats, bounded against abuse
(bytes, nesting depth, records, distinct methods, label length), names shown as plain text."""
from __future__ import annotations

import json
import re

import pytest

from app.core import sweep_file as E
from app.core.sweep_file import json_depth, load_sweep, parse_sweep, plain_text
from app.core.errors import InputError


def _rows(n: int, methods: int = 1) -> list[dict]:
    return [{"method": f"m{i % methods}", "gmacs": 1.0 + i, "top1": 70.0} for i in range(n)]


# ----------------------------------------------------------------------------- formats (moved from test_app.py)


def test_sweep_loader_is_tolerant(tmp_path):
    records = [
        {"model": "deit_base_patch16_224", "num_prop": 8, "GMACs": 13.1, "top1": 81.4},
        {"model": "deit_base_patch16_224", "num_prop": 4, "gmacs": "15.3", "Top1": "81.7%"},
        {"model": "deit_small_patch16_224", "num_prop": 8, "gmacs": 3.4, "agreement": 0.93},
        {"model": "broken", "top1": 80.0},  # no GMACs: skipped
    ]
    json_file = tmp_path / "sweep.json"
    json_file.write_text(json.dumps({"records": records}))
    got, message = load_sweep(json_file)
    assert [r["gmacs"] for r in got] == [13.1, 15.3, 3.4]
    assert got[1]["top1"] == 81.7 and got[2]["agreement"] == pytest.approx(93.0) and got[2]["top1"] is None
    assert "skipped 1" in message
    csv_file = tmp_path / "sweep.csv"
    csv_file.write_text("model,num_prop,GMACs,Acc1\ndeit_base_patch16_224,8,13.1,0.814\n")
    got, _ = load_sweep(csv_file)
    assert got == [{"gmacs": 13.1, "top1": pytest.approx(81.4), "agreement": None, "method": "sweep",
                    "label": "model=deit_base_patch16_224, num_prop=8"}]
    got, _ = parse_sweep(json.dumps(records[:1]))  # a bare list
    assert len(got) == 1
    for bad in ("", "{not json", "a,b\n1,2\n", json.dumps([{"gmacs": 1}])):
        with pytest.raises(InputError):
            parse_sweep(bad)
    binary = tmp_path / "sweep.bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not a text"):
        load_sweep(binary)


def test_sweep_loader_reads_the_gtp_sweep_format(tmp_path):
    """Records as `python -m gtp sweep` documents them: percents, nulls, lists, nested timing."""
    from app.core.assets import published_results
    from app.views import tradeoff as F
    from conftest import figure_of
    common = dict(model="deit_small_patch16_224", weights="random", data="/data", limit=None, images=50,
                  labelled=False, top1=None, top5=None, full_top1=None, full_top5=None, kl=0.1, cosine=0.99,
                  cosine_min=0.9, full_gmacs=4.599, timing={"device": "cpu", "img_per_s": 10.0})
    records = [
        dict(common, method="full", num_prop=0, sparsity=None, alpha=None, gmacs=4.599, agreement=100.0),
        dict(common, method="gtp", num_prop=8, sparsity=0.6, alpha=0.1, gmacs=3.437, agreement=0.8),
        dict(common, method="tome", num_prop=[8] * 12, sparsity=None, alpha=None, gmacs=3.3, agreement=96.0),
    ]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(records))
    assert json_depth(path.read_text()) == 3  # list > record > timing / num_prop: far under the bound
    got, message = load_sweep(path)
    assert [r["method"] for r in got] == ["full", "gtp", "tome"]
    assert [r["agreement"] for r in got] == [100.0, 0.8, 96.0]  # percents stay percents
    assert all(r["top1"] is None for r in got) and "3 record" in message
    chart = figure_of(F.tradeoff(published_results(), "deit_small_patch16_224", None, got))
    sweep = [t for t in chart["data"] if (t.get("meta") or {}).get("role") == "sweep"]
    assert sorted(len(t["x"]) for t in sweep) == [1, 1, 1]   # one agreement series per method


# ----------------------------------------------------------------------------- bounds


def test_oversize_file_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    with open(path, "wb") as f:  # sparse: no disk used
        f.truncate(E.MAX_SWEEP_BYTES + 1)
    monkeypatch.setattr(type(path), "read_bytes", lambda self: pytest.fail("read an oversize file"))
    with pytest.raises(InputError, match=f"at most {E.MAX_SWEEP_BYTES // 2**20} MB"):
        load_sweep(path)


def test_deeply_nested_json_is_refused_without_recursion(tmp_path):
    """Issue 12: a 100,000-deep file gave a RecursionError; now a sentence naming the bound."""
    for opener, closer in (("[", "]"), ('{"a":', "}")):
        path = tmp_path / "deep.json"
        path.write_text(opener * 100_000 + "1" + closer * 100_000)
        with pytest.raises(InputError, match=f"100,000 levels deep; a sweep file needs at most {E.MAX_SWEEP_DEPTH}"):
            load_sweep(path)
    # Just past the bound is refused, at the bound is parsed (and then judged on its records).
    deep = "[" * (E.MAX_SWEEP_DEPTH + 1) + "]" * (E.MAX_SWEEP_DEPTH + 1)
    with pytest.raises(InputError, match="levels deep"):
        parse_sweep(deep)
    at_bound = "[" * (E.MAX_SWEEP_DEPTH - 2) + json.dumps(_rows(1)) + "]" * (E.MAX_SWEEP_DEPTH - 2)
    assert json_depth(at_bound) == E.MAX_SWEEP_DEPTH
    with pytest.raises(InputError, match="no usable records"):
        parse_sweep(at_bound)


def test_depth_ignores_brackets_inside_strings():
    assert json_depth('[{"method": "[[[[{{{{ \\" [[[[", "gmacs": 1}]') == 2
    assert json_depth("[[1], [2, [3]], {}]") == 3
    assert json_depth('"[[[["') == 0 and json_depth("1") == 0
    text = json.dumps([{"method": "[" * 1000 + '"\\', "gmacs": 2.0, "top1": 70}])
    got, _ = parse_sweep(text)  # brackets inside a name do not count as nesting
    assert got[0]["gmacs"] == 2.0 and got[0]["method"].startswith("[[[[")


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_too_many_records_refused(fmt):
    n = E.MAX_SWEEP_RECORDS
    if fmt == "json":
        ok, too_many = json.dumps(_rows(n)), json.dumps({"results": _rows(n + 1)})
    else:
        ok = "method,gmacs,top1\n" + "m,1.0,70\n" * n
        too_many = ok + "m,2.0,71\n"
    assert len(parse_sweep(ok)[0]) == n
    with pytest.raises(InputError, match=f"more than {n:,} records"):
        parse_sweep(too_many)


def test_too_many_methods_refused():
    """Issue 12: 3,000 method names (one chart series each) kept a core busy for 21 s."""
    n = E.MAX_SWEEP_METHODS
    got, _ = parse_sweep(json.dumps(_rows(2 * n, methods=n)))
    assert len({r["method"] for r in got}) == n
    with pytest.raises(InputError, match=f"3,000 different method names.*at most {n}"):
        parse_sweep(json.dumps(_rows(3000, methods=3000)))


def test_names_become_one_short_line_of_text():
    long = "x" * 10_000
    text = json.dumps([{"method": "a\nb\x00c\u2028d\t e", "gmacs": 1, "top1": 70, "num_prop": list(range(5000))},
                       {"method": long, "gmacs": 2, "top1": 71}])
    got, _ = parse_sweep(text, name="evil\nname.json")
    assert got[0]["method"] == "a b c d e"
    assert len(got[1]["method"]) == E.MAX_LABEL_CHARS and got[1]["method"].endswith("…")
    assert all(len(r["label"]) <= 3 * E.MAX_LABEL_CHARS for r in got)
    with pytest.raises(InputError, match=r"^evil name\.json is empty"):
        parse_sweep("", name="evil\nname.json")
    assert plain_text(12.5) == "12.5" and plain_text("") == ""


def test_tradeoff_chart_draws_any_method_name():
    """Method names from a sweep file are shown as plain text in the chart the app draws."""
    from app.ui import handlers as H
    from conftest import figure_of
    got, _ = parse_sweep(json.dumps([{"method": r"$\frac{$", "gmacs": 3.0, "top1": 70.0},
                                     {"method": "$x$", "gmacs": 4.0, "agreement": 90.0}]))
    chart = figure_of(H.draw_tradeoff(None, got))
    names = [t["name"] for t in chart["data"] if (t.get("meta") or {}).get("role") == "sweep"]
    assert len(names) == 2 and all("$" not in n for n in names)   # '$' would start LaTeX in plotly.js
    assert any(r"&#36;\frac{&#36;" in n for n in names) and any("&#36;x&#36;" in n for n in names)


def test_names_lose_bidirectional_and_zero_width_characters():
    r"""U+202E would show "evil\u202egnp.json" as "evilnosj.png"; U+200B makes equal-looking names differ."""
    got, _ = parse_sweep(json.dumps([{"method": "gt\u200bp\u202e", "gmacs": 1, "top1": 70},
                                     {"method": "\u2066tome\u2069\ufeff", "gmacs": 2, "top1": 71}]))
    assert [r["method"] for r in got] == ["gtp", "tome"]
    assert plain_text("a\u200d\u2060b\u061c c\u00ad") == "ab c" and plain_text("café ✓") == "café ✓"


def test_template_fields_in_names_are_shown_as_text():
    """plotly fills '%{...}' in a hover template: a method name holding one is drawn as written."""
    from app.ui import handlers as H
    from conftest import figure_of
    got, _ = parse_sweep(json.dumps([{"method": "%{y} %{customdata[0]}", "gmacs": 3.0, "top1": 70.0}]))
    trace = next(t for t in figure_of(H.draw_tradeoff(None, got))["data"] if (t.get("meta") or {}).get("role") == "sweep")
    assert "&#37;{y} &#37;{customdata[0]}" in trace["name"] and "%{y} %{customdata[0]}" not in trace["hovertemplate"]
    own = re.findall(r"%\{[^}]*\}", trace["hovertemplate"])
    assert own == ["%{customdata[0]}", "%{x:.2f}", "%{y:.2f}"]  # only the chart's own fields remain
