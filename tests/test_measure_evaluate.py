"""`python -m gtp eval` (gtp.measure.evaluate): numbers equal to counting by hand, label files,
label-free fidelity, and torchrun with 2 CPU processes giving the one-process result."""
from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gtp
from gtp import cli
from gtp.measure.data import imagenet_classes, scan_folder
from gtp.measure.evaluate import Evaluator, shard_batches

from conftest import ROOT, random_model
from fidelity_by_hand import fidelity_by_hand

MODEL = "deit_tiny_patch16_224"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded():
    from gtp.models import load_model
    return load_model(MODEL, device="cpu")  # offline: the seeded random deit_tiny


def _put(folder: Path, photo: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(photo, folder / photo.name)


def test_shards_cover_every_image_once():
    for n, b, w in [(10, 3, 2), (3, 1, 2), (1, 4, 3), (7, 2, 4)]:
        got = sorted(i for r in range(w) for batch in shard_batches(n, b, r, w) for i in batch)
        assert got == list(range(n))
    assert shard_batches(7, 2, 0, 1) == [[0, 1], [2, 3], [4, 5], [6]]
    assert shard_batches(7, 2, 1, 2) == [[2, 3], [6]]


@torch.inference_mode()
def test_eval_equals_counting_by_hand(tmp_path, photos, loaded):
    from gtp.models import load_image
    model = loaded.model

    def run(x):  # (logits [K] from model(x), final pre-logits feature [C]) by timm's public API
        feat = model.forward_head(model.forward_features(x), pre_logits=True)
        return model(x)[0].double(), feat[0].double()

    xs = [loaded.transform(load_image(p)).unsqueeze(0) for p in photos]
    full = [run(x) for x in xs]
    gtp.patch(model, num_prop=8)
    red = [run(x) for x in xs]
    gmacs_gtp = gtp.gmacs(model)
    gtp.unpatch(model)
    # Labels: the full model's own top-1 for two photos (so top-1 is not trivially 0), others fixed.
    labels = [int(full[0][0].argmax()), int(full[1][0].argmax()), 281, 285]
    wnids, _ = imagenet_classes()
    scheme = [lambda c: wnids[c], str, lambda c: "tabby_cat", lambda c: "Egyptian cat"]
    data = tmp_path / "labelled"
    names: dict[int, str] = {}
    for photo, label, name in zip(photos, labels, scheme):
        _put(data / names.setdefault(label, name(label)), photo)

    def hits(outs, k):
        return sum(int(label in o.topk(k).indices.tolist()) for (o, _), label in zip(outs, labels))

    kl = [float((F.softmax(f, -1) * (F.log_softmax(f, -1) - F.log_softmax(r, -1))).sum())
          for (f, _), (r, _) in zip(full, red)]
    cos = [float(F.cosine_similarity(f, r, dim=0)) for (_, f), (_, r) in zip(full, red)]

    out = tmp_path / "res"
    rc = cli.main(["eval", "--model", MODEL, "--data", str(data), "--batch-size", "3", "--no-progress",
                   "--num-prop", "8", "--out", str(out)])
    assert rc == 0
    rec = json.loads((tmp_path / "res.json").read_text())
    assert rec["images"] == 4 and rec["labelled"] and rec["method"] == "gtp" and rec["num_prop"] == 8
    assert rec["full_top1"] == 100.0 * hits(full, 1) / 4
    assert rec["full_top5"] == 100.0 * hits(full, 5) / 4
    assert rec["top1"] == 100.0 * hits(red, 1) / 4
    assert rec["top5"] == 100.0 * hits(red, 5) / 4
    assert rec["full_top1"] >= 50.0
    agree = sum(int(f.argmax() == r.argmax()) for (f, _), (r, _) in zip(full, red))
    assert rec["agreement"] == 100.0 * agree / 4
    assert rec["kl"] == pytest.approx(sum(kl) / 4, abs=1e-6)
    assert rec["cosine"] == pytest.approx(sum(cos) / 4, abs=1e-6)
    assert rec["cosine_min"] == pytest.approx(min(cos), abs=1e-6)
    assert rec["gmacs"] == pytest.approx(gmacs_gtp, abs=1e-6)
    assert rec["full_gmacs"] == pytest.approx(gtp.gmacs(model), abs=1e-6)
    assert set(rec["timing"]) >= {"img_per_s", "full_img_per_s", "speedup", "world_size", "device"}
    rows = list(csv.DictReader(open(tmp_path / "res.csv")))
    assert len(rows) == 1 and float(rows[0]["top1"]) == rec["top1"] and "timing.img_per_s" in rows[0]

    # The same images in one flat folder, as ImageNet val is shipped, labelled by a file.
    flat = tmp_path / "flat_val"
    for photo in photos:
        _put(flat, photo)
    kaggle = tmp_path / "LOC_val_solution.csv"
    kaggle.write_text("ImageId,PredictionString\n" + "".join(
        f"{p.stem},{wnids[c]} 1 2 30 40 {wnids[c]} 5 6 70 80\n" for p, c in zip(photos, labels))
        + "not_in_the_folder,n01440764 0 0 10 10\n")
    val_txt = tmp_path / "val.txt"
    val_txt.write_text("".join(f"{p.name} {c}\n" for p, c in zip(photos, labels)))
    for labels_file in (kaggle, val_txt):
        assert cli.main(["eval", "--model", MODEL, "--data", str(flat), "--labels", str(labels_file),
                         "--batch-size", "3", "--no-progress", "--num-prop", "8",
                         "--out", str(tmp_path / "flat_res")]) == 0
        flat_rec = json.loads((tmp_path / "flat_res.json").read_text())
        assert str(labels_file) in flat_rec["data"]
        assert {k: v for k, v in flat_rec.items() if k not in ("timing", "data")} == \
            {k: v for k, v in rec.items() if k not in ("timing", "data")}


@torch.inference_mode()
def test_unlabelled_and_headless_report_fidelity_only(tmp_path, photos, loaded):
    flat = tmp_path / "flat"
    for p in photos[:2]:
        _put(flat, p)
    images = scan_folder(flat)
    # A random model's softmax is near uniform (KL ~1e-6 either way round): a sharper head makes
    # KL(full || reduced) tell itself from KL(reduced || full).
    model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        model.head.weight.mul_(200)
    ev = Evaluator(model, images, loaded.transform, True, 224, batch_size=2, progress=False)
    rec = ev.measure("tome", 8)
    assert rec["top1"] is None and rec["full_top1"] is None and not rec["labelled"]
    x = torch.stack([loaded.transform(Image.open(p).convert("RGB")) for p in photos[:2]])
    by_hand = fidelity_by_hand(model, x, "tome", 8)   # the same two photos, recomputed here
    assert by_hand["kl"].mean() > 1e-3
    assert rec["kl"] == pytest.approx(by_hand["kl"].mean(), rel=1e-5)   # 8 decimals kept: KL(reduced || full) fails
    assert 1 - rec["cosine"] == pytest.approx(1 - by_hand["cosine"].mean(), rel=1e-2, abs=1e-7)   # near 1: its gap
    assert rec["agreement"] == pytest.approx(100 * by_hand["agree"].mean())
    full = ev.measure("full")  # the cached reference, nothing recomputed
    assert full["cosine"] == 1.0 and full["kl"] == 0.0 and full["agreement"] == 100.0
    headless = random_model(MODEL, num_classes=0)
    ev = Evaluator(headless, images, loaded.transform, False, 224, batch_size=2, progress=False)
    rec = ev.measure("gtp", 8)
    assert rec["agreement"] is None and rec["kl"] is None and rec["top1"] is None
    assert 0 < rec["cosine"] < 1 and rec["gmacs"] < rec["full_gmacs"]


def test_cli_errors_are_one_line(tmp_path, photos, capsys):
    lab = tmp_path / "bad"
    _put(lab / "crane", photos[0])
    assert cli.main(["eval", "--model", MODEL, "--data", str(lab), "--no-progress"]) == 2
    assert "ambiguous" in capsys.readouterr().err


def _torchrun_available() -> bool:
    try:
        import torch.distributed.run  # noqa: F401
        return torch.distributed.is_available() and torch.distributed.is_gloo_available()
    except ImportError:
        return False


@pytest.mark.skipif(not _torchrun_available(), reason="torch.distributed / gloo unavailable")
def test_torchrun_two_cpu_processes_give_the_one_process_result(tmp_path, photos):
    data = tmp_path / "data"
    for photo, folder in zip(photos[:3], ("n01440764", "281", "281")):
        _put(data / folder, photo)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    args = ["eval", "--model", MODEL, "--data", str(data), "--batch-size", "1", "--no-progress",
            "--device", "cpu", "--num-prop", "8"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one = subprocess.run([sys.executable, "-m", "gtp", *args, "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(port),
                          "-m", "gtp", *args, "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert a.pop("timing")["world_size"] == 1
    assert b.pop("timing")["world_size"] == 2
    assert a == b
    assert a["images"] == 3
    assert two.stdout.count("top-1 agreement") == 1  # rank 0 alone reports
