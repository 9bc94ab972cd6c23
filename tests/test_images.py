"""gtp.images: any image mode to RGB, preprocessing for a loaded model, reading top-k classes."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import gtp.images as I
import gtp.models as M

TINY = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def tiny_random():
    return M.load_model(TINY, device="cpu")


def test_models_reexports_the_image_functions():
    """Older imports (`from gtp.models import preprocess`) keep working: the same functions."""
    for name in ("to_rgb", "load_image", "preprocess", "top_k"):
        assert getattr(M, name) is getattr(I, name)


def _modes() -> dict[str, Image.Image]:
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    base = Image.fromarray(rgb, "RGB")
    p_transparent = base.convert("P")
    p_transparent.info["transparency"] = 0
    gif = io.BytesIO()
    base.save(gif, "GIF", save_all=True, append_images=[base.rotate(90)], duration=50)
    gif.seek(0)
    return {
        "RGB": base, "RGBA": base.convert("RGBA"), "LA": base.convert("LA"), "L": base.convert("L"),
        "1": base.convert("1"), "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "I": base.convert("I"), "F": base.convert("F"), "CMYK": base.convert("CMYK"),
        "P": base.convert("P"), "P+transparency": p_transparent, "YCbCr": base.convert("YCbCr"),
        "GIF": Image.open(gif),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_preprocess_any_mode(tiny_random, mode):
    img = _modes()[mode]
    assert img.mode == mode.split("+")[0] or mode == "GIF"
    x = I.preprocess(img, tiny_random)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_preprocess_values(tiny_random):
    white = I.preprocess(Image.new("RGB", (64, 64), (255, 255, 255)), tiny_random)
    # 16-bit full scale is white, fully transparent pixels are shown on white.
    assert torch.allclose(I.preprocess(Image.new("I;16", (64, 64), 65535), tiny_random), white)
    assert torch.allclose(I.preprocess(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), tiny_random), white)
    grey = np.full((64, 64), 128, np.uint8)
    assert torch.allclose(I.preprocess(Image.fromarray(grey), tiny_random),
                          I.preprocess(Image.fromarray(np.stack([grey] * 3, -1)), tiny_random))


def test_load_image_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        I.load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="cannot read image"):
        I.load_image(bad)
    ok = tmp_path / "ok.png"
    Image.new("LA", (8, 8)).save(ok)
    assert I.load_image(ok).mode == "RGB"


def test_top_k():
    names = [f"c{i}" for i in range(10)]
    logits = torch.arange(10.0)
    top = I.top_k(logits, names, 3)
    assert [t[1] for t in top] == ["c9", "c8", "c7"]
    assert top[0][2] == pytest.approx(logits.softmax(-1)[9].item())
    assert I.top_k(logits, None, 1)[0][:2] == (9, "class 9")


def _gif(n: int) -> io.BytesIO:
    frames = [Image.fromarray(np.full((32, 32), 20 * (i % 12), np.uint8), "L") for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10)
    buf.seek(0)
    return buf


def test_to_rgb_takes_the_first_frame_without_walking_the_file(monkeypatch):
    from PIL import GifImagePlugin
    img = Image.open(_gif(5))
    img.seek(3)
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames",
                        property(lambda self: pytest.fail("n_frames reads every frame of the file")))
    assert I.to_rgb(img).getpixel((0, 0)) == (0, 0, 0)  # frame 0 is black, frame 3 is not


def test_photo_frames_counted_up_to_a_bound(tmp_path, monkeypatch):
    """app.photos (the app's upload check, a user of to_rgb): a GIF's frames are counted only up
    to MAX_FRAMES_COUNTED, since counting them all costs seconds for a million-frame file."""
    from PIL import GifImagePlugin

    from app.core.limits import MAX_FRAMES_COUNTED
    from app.core.photos import open_photo
    seeks = []
    real_seek = GifImagePlugin.GifImageFile.seek
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "seek", lambda self, f: (seeks.append(f), real_seek(self, f))[1])
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames",
                        property(lambda self: pytest.fail("n_frames reads every frame of the file")))
    for n, note in ((3, "used the first of 3 frames"), (3 * MAX_FRAMES_COUNTED, f"more than {MAX_FRAMES_COUNTED}")):
        path = tmp_path / f"{n}.gif"
        path.write_bytes(_gif(n).getvalue())
        seeks.clear()
        photo = open_photo(path)
        assert any(note in x for x in photo.notes), photo.notes
        assert max(seeks) <= MAX_FRAMES_COUNTED + 1 and photo.image.getpixel((0, 0)) == (0, 0, 0)
