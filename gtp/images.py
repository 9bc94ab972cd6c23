"""The two ends of one prediction: an image file or PIL image in, the model's input tensor
out (`load_image`, `to_rgb`, `preprocess`), and the model's logits read back as class names
(`top_k`). Nothing here knows timm: `preprocess` only needs the model's transform and device
(a `gtp.models.LoadedModel` has both).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Protocol, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor


class Preprocessing(Protocol):
    """What `preprocess` needs of a loaded model (`gtp.models.LoadedModel` is one)."""
    transform: Callable[[Image.Image], Tensor]  # RGB PIL image -> [3, H, W]

    @property
    def device(self) -> torch.device: ...


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: first frame of animations, EXIF rotation applied,
    transparency composited on white, 16/32-bit and float greyscale scaled to 0..255."""
    if getattr(image, "is_animated", False):  # not n_frames: that walks every frame of the file
        image.seek(0)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF is not worth failing on
        pass
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I") or mode == "F":
        a = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            a = a / 257.0                     # 16-bit full range -> 8-bit
        elif a.size and (a.min() < 0 or a.max() > 255):
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: Union[str, Path]) -> Image.Image:
    """Open an image file as RGB; ValueError with a one-line reason if it cannot be read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def preprocess(image: Image.Image, loaded: Preprocessing) -> Tensor:
    """A PIL image of any mode -> the model's input [1, 3, H, W], on the model's device."""
    try:
        rgb = to_rgb(image)
    except Exception as e:
        raise ValueError(f"cannot convert a {image.mode} image to RGB: {e}") from None
    return loaded.transform(rgb).unsqueeze(0).to(loaded.device)


def top_k(logits: Tensor, class_names: Optional[list[str]], k: int = 5) -> list[tuple[int, str, float]]:
    """The k most probable classes of one image's logits [C]: (index, name, probability)."""
    probs = logits.detach().float().reshape(-1).softmax(-1)
    p, idx = probs.topk(min(k, probs.numel()))
    return [(int(i), class_names[int(i)] if class_names else f"class {int(i)}", float(q))
            for q, i in zip(p, idx)]
