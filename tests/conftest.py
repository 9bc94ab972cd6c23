"""Shared fixtures: seeded random timm models, the real DINOv2 weights when present."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import timm
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on the model hub

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DINOV2_FILE = SHARED / "weights" / "vit_small_patch14_dinov2.safetensors"


def random_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A randomly initialised timm model, the same for the same seed."""
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def dinov2_model() -> torch.nn.Module:
    """The real DINOv2 ViT-S/14 from ../shared/weights (skips where absent)."""
    if not DINOV2_FILE.exists():
        pytest.skip(f"real weights not found at {DINOV2_FILE}")
    return timm.create_model(
        "vit_small_patch14_dinov2", pretrained=True, img_size=224, num_classes=0,
        pretrained_cfg_overlay=dict(file=str(DINOV2_FILE)),
    ).eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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


@pytest.fixture(scope="module")
def url():
    """The app launched in this process on a free port: its base URL."""
    from app.inference import wait_idle
    from app.layout import CSS, create_app
    demo = create_app()
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, css=CSS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        wait_idle()  # a follow-up event may still be counting GMACs
