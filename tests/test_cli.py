"""`python -m gtp`: predict end to end, clean errors, the shared GTP options."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DINOV2_FILE
from gtp import cli, options

ROOT = Path(__file__).resolve().parent.parent
TINY = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """assets/chelsea.png when the repo has it, else a generated image (gradient + disc) as JPEG."""
    if (ROOT / "assets" / "chelsea.png").is_file():
        return ROOT / "assets" / "chelsea.png"
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx / w * 255, yy / h * 255, np.full((h, w), 90.0)], -1)
    img[(yy - 120) ** 2 + (xx - 160) ** 2 < 60 ** 2] = (230, 200, 40)
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    Image.fromarray(img.astype(np.uint8)).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", GTP_WEIGHTS_DIR=str(tmp_path_factory.mktemp("noweights")))
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def _gtp(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gtp", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_predict_end_to_end(photo, env):
    r = _gtp(env, "predict", str(photo), "--model", TINY, "--num-prop", "8", "--sparsity", "0.6")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "WARNING" in out and "RANDOM" in out  # offline: random weights, said prominently
    assert "baseline top-5" in out and "GTP top-5" in out
    rows = [line for line in out.splitlines() if re.match(r"\s+\d\. ", line)]
    assert len(rows) == 5 and all(line.count("%") == 2 and "|" in line for line in rows)
    assert re.search(r"top-1 agrees: (yes|no)", out)
    m = re.search(r"GMACs: baseline ([\d.]+) \| GTP ([\d.]+) \| reduction ([\d.]+)%", out)
    assert m, out
    base, red, pct = map(float, m.groups())
    assert 1.0 < base < 1.5 and red < base  # DeiT-Ti is about 1.26 GMACs
    assert pct == pytest.approx(100 * (1 - red / base), abs=0.1)
    assert "197 in, 101 after the last block" in out  # 196 + CLS, 12 blocks x 8 tokens removed


def test_unknown_model_exits_2(photo, env):
    r = _gtp(env, "predict", str(photo), "--model", "resnet50")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "unknown model 'resnet50'" in r.stderr and TINY in r.stderr


@pytest.mark.parametrize("extra, message", [
    (["--sparsity", "1.5"], "sparsity"),
    (["--num-prop", "1", "2", "3"], "one entry per block"),
    (["--num-prop", "196"], "num_prop"),
    (["--num-neighbours", "0"], "num_neighbours"),
    (["--device", "nonsense"], "device"),
])
def test_bad_hyper_parameters_exit_2(photo, capsys, extra, message):
    """Out of range: refused as the option is parsed (argparse exits) or, for bounds that
    depend on the model, by gtp.patch (main returns); either way exit code 2, one line."""
    try:
        code = cli.main(["predict", str(photo), "--model", TINY, *extra])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_argparse_errors_are_one_line(photo, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", str(photo), "--graph", "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_unreadable_inputs_exit_2(tmp_path, photo, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    assert cli.main(["predict", str(bad), "--model", TINY]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "missing.png"), "--model", TINY]) == 2
    assert "image not found" in capsys.readouterr().err
    assert cli.main(["predict", str(photo), "--model", TINY, "--weights", str(tmp_path / "w.pth")]) == 2
    assert "weights file not found" in capsys.readouterr().err


def test_predict_headless_dinov2(photo, capsys):
    if not DINOV2_FILE.exists():
        pytest.skip(f"real weights not found at {DINOV2_FILE}")
    rc = cli.main(["predict", str(photo), "--model", "vit_small_patch14_dinov2",
                   "--weights", str(DINOV2_FILE), "--num-prop", "8"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "WARNING" not in out and "top-5" not in out
    m = re.search(r"cosine similarity baseline vs GTP: ([-\d.]+)", out)
    assert m and 0.0 < float(m.group(1)) <= 1.0001
    assert re.search(r"GMACs: baseline [\d.]+ \| GTP [\d.]+ \| reduction [\d.]+%", out)


def test_predict_says_what_a_clamped_schedule_runs(photo, capsys):
    """P = 100 on 196 patch tokens: the first block removes 100, the others none (and it says so)."""
    assert cli.main(["predict", str(photo), "--model", TINY, "--num-prop", "100", "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "P per block as run" in out and "100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0" in out
    assert "197 in, 97 after the last block" in out
    assert "GTP: P=100 θ=0.6 α=0.1 graph=mixed M=8" in out


def test_gtp_options_shared():
    p = argparse.ArgumentParser()
    options.add_gtp_arguments(p)
    kw = options.gtp_kwargs(p.parse_args([]))
    assert kw == dict(num_prop=8, sparsity=0.6, alpha=0.1, graph="mixed", num_neighbours=8,
                      selection="mixed_attn_max", propagation="graph", token_scale=True)
    kw = options.gtp_kwargs(p.parse_args(["--num-prop", *["4"] * 12, "--no-token-scale", "--graph", "spatial",
                                          "--alpha", "0", "--propagation", "mean"]))
    assert kw["num_prop"] == [4] * 12 and kw["token_scale"] is False
    assert kw["graph"] == "spatial" and kw["alpha"] == 0.0 and kw["propagation"] == "mean"


def test_models_command_lists_all(capsys):
    from gtp.models import SUPPORTED_MODELS
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUPPORTED_MODELS)


def test_bench_is_wired(capsys):
    pytest.importorskip("gtp.measure.bench")
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--num-prop" in out and "--model" in out
