"""The ViTs GTP Explorer supports (timm's, and Hugging Face transformers models by hub id where
`transformers` is installed: `gtp.hf_models`), and loading them with whatever weights can be had offline.
(Images in and predictions out live in `gtp.images`; their names are re-exported here.)

Weights are looked for in this order, and the first that exists is used:
  1. `weights=` given: that local .safetensors / .pth / .pt file, treated as hostile (checked
     and read within bounds by `gtp.weights`; an error if it cannot be loaded, is larger than
     MAX_WEIGHTS_BYTES or more than the model can hold);
  2. `<name>.safetensors` in $GTP_WEIGHTS_DIR, then in the repo's sibling `shared/weights/`;
  3. the local Hugging Face (or torch hub) cache of the model's timm weights;
  4. the Hugging Face hub, only when not offline (HF_HUB_OFFLINE) and the hub answers a quick probe;
  5. otherwise a seeded random initialisation (`pretrained=False`): runs, but predicts nothing meaningful.
Nothing here waits more than a couple of seconds on the network, and hub errors never escape.
A load that fails leaves nothing behind: the half-built model and the tensors read are freed
before the error reaches the caller (see `_create_from_file`).
"""
from __future__ import annotations

import ctypes
import functools
import gc
import logging
import math
import os
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union
from urllib.parse import urlparse

import timm
import timm.data
import torch
from PIL import Image
from torch import Tensor, nn

from . import hf_models
from .images import load_image, preprocess, to_rgb, top_k  # noqa: F401 (re-exported: older imports)
from .weights import (REFUSED, WeightsBounds, WeightsRefused, file_digest, file_label, load_notes,
                      public_message, readable)

# The largest weights file accepted (the app's upload limit too): room for the biggest supported
# model, DeiT-B / ViT-B at about 350 MB in float32, not for an arbitrary file filling memory.
MAX_WEIGHTS_BYTES = 512 * 2**20

_log = logging.getLogger(__name__)

# name -> short description, in the order the UI lists them.
SUPPORTED_MODELS: "OrderedDict[str, str]" = OrderedDict([
    ("deit_tiny_patch16_224", "DeiT-Tiny/16, 224 px, ImageNet-1k (5.7M params)"),
    ("deit_small_patch16_224", "DeiT-Small/16, 224 px, ImageNet-1k (22M params)"),
    ("deit_base_patch16_224", "DeiT-Base/16, 224 px, ImageNet-1k (86M params; the paper's main model)"),
    ("deit_small_distilled_patch16_224", "DeiT-Small/16 distilled (CLS + distillation token), ImageNet-1k"),
    ("vit_small_patch16_224.augreg_in21k_ft_in1k", "ViT-S/16 AugReg, ImageNet-21k -> 1k"),
    ("vit_base_patch16_224.augreg_in21k_ft_in1k", "ViT-B/16 AugReg, ImageNet-21k -> 1k"),
    ("vit_small_patch14_dinov2", "DINOv2 ViT-S/14 backbone at 224 px, no classifier head (features only)"),
])
if hf_models.available():  # transformers models by hub id (built by gtp.hf_models; imported only when loaded)
    SUPPORTED_MODELS.update((name, spec.about) for name, spec in hf_models.HUB_MODELS.items())

# Extra timm.create_model arguments; DINOv2 is run at 224 px (16 x 16 patches) and headless.
_CREATE_KWARGS: dict[str, dict[str, Any]] = {
    "vit_small_patch14_dinov2": dict(img_size=224, num_classes=0),
}

RANDOM_SEED = 0          # random fallback weights: the same model every time
PROBE_TIMEOUT_S = 2.0    # how long the hub connectivity probe may take
_REPO_ROOT = Path(__file__).resolve().parent.parent
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_TRUTHY = {"1", "true", "yes", "on"}
_hub_reachable: Optional[bool] = None  # the probe's answer, cached per process


@dataclass
class LoadedModel:
    """A supported model ready for inference, with how to feed it and read it."""
    model: nn.Module                     # eval mode, on the requested device
    name: str                            # a key of SUPPORTED_MODELS
    source: str                          # "hub", "file" or "random"
    pretrained: bool                     # False for a random initialisation
    message: str                         # one sentence: where the weights came from
    data_config: dict                    # timm.data.resolve_data_config: input_size, mean, std, ...
    transform: Callable[[Image.Image], Tensor]  # RGB PIL image -> [3, H, W]
    class_names: Optional[list[str]]     # 1000 ImageNet class names; None for a headless model
    has_head: bool                       # False when the model outputs features, not logits

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def img_size(self) -> tuple[int, int]:
        """(H, W) the model takes."""
        return tuple(self.data_config["input_size"][1:])


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in SUPPORTED_MODELS:
        raise ValueError(f"unknown model {name!r}; supported models: {', '.join(SUPPORTED_MODELS)}")
    return name


def _resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return dev


def _is_offline() -> bool:
    """HF_HUB_OFFLINE read live (huggingface_hub only reads it at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY:
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the HF hub answers a TCP connection within `timeout` seconds (cached per process).

    Runs in a daemon thread because DNS lookups ignore socket timeouts.
    """
    global _hub_reachable
    if _hub_reachable is None:
        try:
            from huggingface_hub import constants
            url = urlparse(constants.ENDPOINT)
        except Exception:
            url = urlparse("https://huggingface.co")
        host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
        result: list[bool] = []

        def probe() -> None:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                result.append(True)
            except OSError:
                result.append(False)

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(timeout)
        _hub_reachable = bool(result and result[0])
    return _hub_reachable


def weight_candidates(name: str) -> list[Path]:
    """Local files looked for, in order, when no weights are given: `<name>.safetensors`
    in $GTP_WEIGHTS_DIR, then in the repo's sibling (or own) `shared/weights/`."""
    dirs = []
    if os.environ.get("GTP_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["GTP_WEIGHTS_DIR"]).expanduser())
    dirs += [_REPO_ROOT.parent / "shared" / "weights", _REPO_ROOT / "shared" / "weights"]
    return [d / f"{name}.safetensors" for d in dirs]


def _cached_hub_file(name: str) -> Optional[str]:
    """The model's timm weights if already in the local HF or torch hub cache, else None."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
            files = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else _HUB_FILES
            for fname in files:
                path = try_to_load_from_cache(cfg.hf_hub_id, fname)
                if isinstance(path, str) and os.path.isfile(path):
                    return path
        except Exception as e:  # a broken cache is just no cache
            _log.debug("HF cache lookup failed for %s: %s", name, e)
    if cfg.url:  # timm's older torch-hub download location
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.is_file():
            return str(path)
    return None


def _release_memory() -> None:
    """Free what a failed load built: collect reference cycles, then ask glibc to give freed heap
    back to the system (`malloc_trim`; each server thread's malloc arena otherwise keeps the
    high-water mark of the largest model that failed, hundreds of MB). No-op where unavailable."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        pass


def _create(name: str, **kwargs) -> nn.Module:
    return timm.create_model(name, **_CREATE_KWARGS.get(name, {}), **kwargs)


@functools.lru_cache(maxsize=None)
def weights_bounds(name: str) -> WeightsBounds:
    """What a weights file for `name` may hold (bytes, tensors, header and pickle sizes), from
    the model's own state dict built on the meta device (shapes only: nothing is allocated)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        state = _create(_check_name(name)).state_dict()
    return WeightsBounds.for_model(sum(t.numel() for t in state.values()) * 4, len(state))


def _non_finite(model: nn.Module) -> int:
    """NaN and inf values in the model's floating-point weights. A float64 sum of float32 values
    cannot overflow, so it is finite exactly when every value is: one fast reduction per
    tensor, and a count only where a sum is not finite (isfinite everywhere took ~10x longer)."""
    floats = [t for t in model.state_dict().values() if t.is_floating_point()]
    sums = torch.stack([t.sum(dtype=torch.float64) for t in floats]).tolist() if floats else []
    return sum(int((~torch.isfinite(t)).sum()) for t, total in zip(floats, sums) if not math.isfinite(total))


def _create_from_file(name: str, path: Union[str, Path]) -> tuple[nn.Module, str]:
    """(model, message) from a local file, which is treated as hostile: checked before any parser
    sees it, a torch.save archive read in a bounded child process (`gtp.weights`), then timm's
    own pretrained loading of the result (unwraps 'model'/'state_dict' checkpoints, strips
    'module.', runs the model's checkpoint filter, e.g. DINOv2 layouts, and loads strictly).
    A refused file is remembered by its content's hash (`gtp.weights.REFUSED`) and refused at
    once next time. Messages name the file, never its folder.

    On failure the ValueError carries no exception chain: timm's error holds, through its
    traceback's frames, the model it built and the tensors it read (hundreds of MB for DeiT-B),
    so the message is taken, that error dropped, memory collected, and only then is ValueError
    raised (`raise ... from None` would still keep the old error as `__context__`)."""
    path = Path(path).expanduser()
    label = file_label(path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {label}")
    if path.suffix.lower() not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"weights must be a .safetensors, .pth, .pt or .bin file; got {label}")
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"weights file {label} is {size / 2**20:.0f} MB; the limit is "
                         f"{MAX_WEIGHTS_BYTES // 2**20} MB (the largest supported model needs about 350 MB)")
    try:
        digest = file_digest(path, MAX_WEIGHTS_BYTES)
    except (OSError, WeightsRefused) as e:  # unreadable, or grown past the limit since stat()
        raise ValueError(public_message(f"could not read weights file {label}: {e}")) from None
    remembered = REFUSED.get(digest, name)
    if remembered is not None:
        raise ValueError(remembered)
    failure, hint = "", ""  # hint: only for files that passed the checks and failed in timm
    try:
        with readable(path, weights_bounds(name)) as ready:
            model = _create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(ready.file)))
        notes = load_notes(ready.info.dtypes, _non_finite(model))
        return model, public_message(f"Loaded {name} weights from {label}" + (f" ({notes})." if notes else "."))
    except WeightsRefused as e:  # refused by a check, or by the bounded reader
        failure = str(e)
    except Exception as e:  # noqa: BLE001 (any failure means: not this model's weights)
        failure, hint = " ".join(str(e).split()) or type(e).__name__, " (do they belong to this model?)"
    if hint:  # timm built a model; outside the except block its error's frames are gone
        _release_memory()  # (a check's refusal built nothing: no 0.5 s collection for it)
    message = public_message(f"could not load weights for {name} from {label}{hint}: {failure}")
    REFUSED.put(digest, name, message)
    raise ValueError(message)


def _create_random(name: str) -> nn.Module:
    """Seeded random initialisation that leaves the global RNG untouched
    (the same weights as `torch.manual_seed(RANDOM_SEED); timm.create_model(name)`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return _create(name, pretrained=False)


def _random_message(name: str, why: str) -> str:
    return (f"No pretrained weights for {name} ({why}): using RANDOM weights, so predictions are "
            f"meaningless; pass a local .safetensors/.pth file with weights=/--weights, or put "
            f"{name}.safetensors in $GTP_WEIGHTS_DIR.")


def _hub_or_random(name: str) -> tuple[nn.Module, str, bool, str]:
    """(model, source, pretrained, message) without a user-given file."""
    for path in weight_candidates(name):
        if path.is_file():
            try:
                model, message = _create_from_file(name, path)
                return model, "file", True, message
            except ValueError as e:  # a bad candidate is skipped, not fatal
                _log.warning("skipping %s: %s", path, e)
    cached = _cached_hub_file(name)
    if cached is not None:
        try:
            model = _create(name, pretrained=True, pretrained_cfg_overlay=dict(file=cached))
            return model, "hub", True, f"Loaded pretrained {name} weights from the local model-hub cache."
        except Exception as e:
            _log.warning("cached weights for %s did not load: %s", name, e)
        _release_memory()  # the failed model, held by the error's frames until now
    if _is_offline():
        return _create_random(name), "random", False, _random_message(name, "not cached and HF_HUB_OFFLINE is set")
    if not hub_reachable():
        return _create_random(name), "random", False, _random_message(name, "not cached and the model hub is unreachable")
    try:
        model = _create(name, pretrained=True)
        return model, "hub", True, f"Downloaded pretrained {name} weights from the Hugging Face hub."
    except Exception as e:
        why = f"download failed: {type(e).__name__}"
        return _create_random(name), "random", False, _random_message(name, why)


def _class_names() -> list[str]:
    """The 1000 ImageNet-1k class names as timm describes them (e.g. 285: 'Egyptian cat',
    0: 'tench, Tinca tinca'); synonyms are kept because first words repeat ('crane', 'maillot')."""
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def load_model(
        name: str,
        weights: Union[str, Path, None] = None,
        device: Union[str, torch.device, None] = None,
) -> LoadedModel:
    """Create a supported timm ViT in eval mode with the best weights available offline.

    Args:
        name: a key of SUPPORTED_MODELS (anything else raises ValueError before timm sees it).
        weights: optional local .safetensors / .pth / .pt file (a raw state dict or a checkpoint
            with 'model' / 'state_dict'); ValueError if missing or not loadable into the model.
        device: e.g. "cpu", "cuda"; None = CUDA when available, else CPU.

    Never raises on hub problems: without weights it falls back to a seeded random model
    (`pretrained=False`, `source="random"`, with a message saying so).
    """
    _check_name(name)
    dev = _resolve_device(device)
    if name in hf_models.HUB_MODELS:
        return _load_hub_model(name, weights, dev)
    if weights is not None and str(weights).strip():
        model, message = _create_from_file(name, weights)
        source, pretrained = "file", True
    else:
        model, source, pretrained, message = _hub_or_random(name)
    model = model.eval().to(dev)
    # The model's own input size, not its pretrained config's (DINOv2's config says 518 px).
    img_size = tuple(model.patch_embed.img_size)
    data_config = timm.data.resolve_data_config(args=dict(input_size=(3, *img_size)), model=model)
    has_head = getattr(model, "num_classes", 0) > 0
    return LoadedModel(
        model=model, name=name, source=source, pretrained=pretrained, message=message,
        data_config=data_config,
        transform=timm.data.create_transform(**data_config, is_training=False),
        class_names=_class_names() if has_head and model.num_classes == 1000 else None,
        has_head=has_head,
    )


def _load_hub_model(name: str, weights: Union[str, Path, None], device: torch.device) -> LoadedModel:
    """A transformers model by hub id (`gtp.hf_models`): cached or downloaded weights, else random."""
    if weights is not None and str(weights).strip():
        raise ValueError(f"a weights file is read for timm models only; {name} loads its weights from the "
                         f"Hugging Face cache (put them there with huggingface_hub on a connected machine)")
    offline = ("not cached and HF_HUB_OFFLINE is set" if _is_offline() else
               None if hub_reachable() else "not cached and the model hub is unreachable")
    built = hf_models.build(name, offline, RANDOM_SEED, lambda name, why: (
        f"No pretrained weights for {name} ({why}): using RANDOM weights, so predictions are meaningless; "
        f"fetch them into the Hugging Face cache (huggingface_hub.snapshot_download) on a connected machine."))
    from .hf_adapter import has_head
    head = has_head(built.model)
    return LoadedModel(
        model=built.model.eval().to(device), name=name, source=built.source, pretrained=built.source != "random",
        message=built.message, data_config=built.data_config, transform=built.transform,
        class_names=_class_names() if head and built.model.config.num_labels == 1000 else None, has_head=head)
