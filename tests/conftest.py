"""Shared fixtures: seeded random timm models, the real DINOv2 weights when present."""
from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on the model hub
if not torch.cuda.is_available():
    # No GPU: Triton's interpreter runs the fused GPU kernels on CPU tensors (gtp/kernels/triton_support.py).
    # Read when a function is jitted, Triton's own library (tl.sum, tl.cumsum) included, so it is set
    # before Triton is imported: `import torch` does not import it, but timm (through torch._dynamo) does.
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest.ini runs two workers side by side: each gets its share of the cores, not all of them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

import timm  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DINOV2_FILE = SHARED / "weights" / "vit_small_patch14_dinov2.safetensors"


def random_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A randomly initialised timm model, the same for the same seed."""
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def attention_inputs(B: int, H: int, n: int, d: int, dtype=torch.float32, token_scale: bool = True, seed: int = 0,
                     device: str = "cpu"):
    """Seeded q, k, v [B, H, n, d] and token sizes [B, n] (or None) for the attention kernels' tests."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, d, generator=g).to(device, dtype) for _ in range(3))
    size = (1 + 3 * torch.rand(B, n, generator=g)).round().to(device) if token_scale else None
    return q, k, v, size


def small_vit(**kwargs) -> torch.nn.Module:
    """A 4-block ViT on 64 x 64 images (64 patch tokens), seeded: any timm prefix layout by keyword."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(3)
    return VisionTransformer(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=2,
                             num_classes=10, **kwargs).eval()


def dinov2_model() -> torch.nn.Module:
    """The real DINOv2 ViT-S/14 from the `shared/weights` folder beside the checkout (skips where absent)."""
    if not DINOV2_FILE.exists():
        pytest.skip(f"real weights not found at {DINOV2_FILE}")
    return timm.create_model(
        "vit_small_patch14_dinov2", pretrained=True, img_size=224, num_classes=0,
        pretrained_cfg_overlay=dict(file=str(DINOV2_FILE)),
    ).eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def deit_tiny() -> torch.nn.Module:
    """A random deit_tiny (seeded), shared by a module's tests (the ToMe tests patch and unpatch it)."""
    return random_model("deit_tiny_patch16_224")


@pytest.fixture(scope="module")
def image_batch() -> torch.Tensor:
    """Two seeded random 224 x 224 images: [2, 3, 224, 224]."""
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def one_thread():
    """One CPU thread: far faster than two on a busy 2-core machine, same results."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def figure_of(value) -> dict:
    """The figure (data, layout) a view handed to `gr.Plot`."""
    return json.loads(value.plot)


def wait_idle(timeout: float = 120.0) -> bool:
    """Wait until no model of the app is running (before a test module's server goes: torch aborts
    the interpreter if it is torn down under a running forward). True if idle in time."""
    from app.core.models import MODELS
    deadline = time.monotonic() + timeout
    for _ in range(2):  # twice, a moment apart: a queued event may just be starting
        for slot in MODELS.values():
            if not slot.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
            slot.lock.release()
        time.sleep(0.5)
    return True


CHROMIUM = "/usr/bin/chromium"   # Debian's (apt, in .ci/run): a test tool never downloads its own browser
ARTIFACTS = ROOT / "artifacts"    # the browser tests' screenshots, for a person to look at (gitignored)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright, for one test module; skips where either is absent."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                                           "--disable-background-networking", "--disable-component-update"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def url():
    """The app launched in this process on a free port: its base URL."""
    from app.ui.layout import CSS, create_app
    demo = create_app()
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, css=CSS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        wait_idle()  # a follow-up event may still be counting GMACs


# ----------------------------------------------------------------------------- photos that go wrong

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


# The real photos shipped in assets/.
PHOTOS = [ROOT / "assets" / n for n in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")]


@pytest.fixture(scope="module")
def photos():
    missing = [p for p in PHOTOS if not p.exists()]
    if missing:
        pytest.skip(f"real photos missing from assets/: {missing}")
    return PHOTOS
