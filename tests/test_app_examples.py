"""Photos, examples, published numbers and sweep files (app/photos.py, app/examples.py)."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import figures as F
from app.examples import EXAMPLE_PHOTOS, load_sweep, parse_sweep, published_results
from app.photos import PhotoError, open_photo

ROOT = Path(__file__).resolve().parent.parent
CAT = str(ROOT / "assets" / "chelsea.png")


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height (1-bit greyscale) with one tiny IDAT: a decompression
    bomb as far as the header goes, without ever holding the pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    cat = Image.open(CAT).convert("RGB")
    out = {}
    out["not_image"] = d / "notes.png"
    out["not_image"].write_text("this is a text file, not a picture\n")
    out["text_file"] = d / "notes.txt"
    out["text_file"].write_text("plain text\n")
    rocket = (ROOT / "assets" / "rocket.jpg").read_bytes()
    out["truncated_jpeg"] = d / "truncated.jpg"
    out["truncated_jpeg"].write_bytes(rocket[: len(rocket) // 3])
    out["one_pixel"] = d / "one.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(out["one_pixel"])
    out["bomb"] = write_png_header_only(d / "bomb.png", 30000, 30000)
    out["greyscale"] = d / "grey.png"
    cat.convert("L").save(out["greyscale"])
    out["rgba"] = d / "rgba.png"
    rgba = cat.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(out["rgba"])
    out["16bit"] = d / "deep.png"
    Image.fromarray((np.asarray(cat.convert("L"), dtype=np.uint16) * 257)).save(out["16bit"])
    out["cmyk"] = d / "cmyk.jpg"
    cat.convert("CMYK").save(out["cmyk"], quality=90)
    out["animated_gif"] = d / "anim.gif"
    frames = [cat.rotate(a) for a in (0, 10, 20)]
    frames[0].save(out["animated_gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out


def test_open_photo_rejects_and_converts(files):
    with pytest.raises(PhotoError, match="too large"):
        open_photo(files["bomb"])
    with pytest.raises(PhotoError, match="No photo"):
        open_photo(None)
    photo = open_photo(files["cmyk"])
    assert photo.image.mode == "RGB" and photo.original_mode == "CMYK"


def test_examples_exist_and_are_credited():
    credits = (ROOT / "assets" / "CREDITS.md").read_text()
    for path in EXAMPLE_PHOTOS:
        assert path.is_file()
        assert path.name in credits
        assert open_photo(path).image.mode == "RGB"


def test_published_results_match_the_paper():
    pub = published_results()
    assert "arXiv:2311.03035" in pub["citation"] and pub["status"] == "published"
    table = {(r["method"], r["gmacs"]): r["top1"] for r in pub["tradeoff_deit_base"]}
    assert table[("GTP", 13.1)] == 81.5 and table[("ToMe", 8.8)] == 77.8
    assert table[("EViT", 9.8)] == 78.7 and table[("ATS", 15.3)] == 81.8
    best = {r["num_prop"]: r for r in pub["best_deit_base_by_num_prop"]}
    assert best[8]["top1"] == 81.46 and best[8]["sparsity"] == 0.6 and len(best) == 14
    csv_text = (ROOT / "assets" / "published_results.csv").read_text()
    assert csv_text.count("published") >= 30 and "arXiv:2311.03035" in csv_text


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
        with pytest.raises(ValueError):
            parse_sweep(bad)
    binary = tmp_path / "sweep.bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError):
        load_sweep(binary)


def test_sweep_loader_reads_the_gtp_sweep_format(tmp_path):
    """Records as `python -m gtp sweep` documents them: percents, nulls, lists, nested timing."""
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
    got, message = load_sweep(path)
    assert [r["method"] for r in got] == ["full", "gtp", "tome"]
    assert [r["agreement"] for r in got] == [100.0, 0.8, 96.0]  # percents stay percents
    assert all(r["top1"] is None for r in got) and "3 record" in message
    assert len(F.figure_of(F.tradeoff(published_results(), "deit_small_patch16_224", None, got))["data"]) > 3
