"""How close each token-reduction method keeps the final CLS feature of a REAL pretrained ViT.

Runs the offline DINOv2 ViT-S/14 weights (the `shared/weights` folder beside the checkout, see
the README there) on real photos (assets/*.png, *.jpg by default) and prints, per method at
equal token counts (P propagated / pruned / fused tokens or r merged tokens per block), the GMACs
and the cosine similarity of the final CLS feature with the unpatched model's:

    python scripts/fidelity.py [--num-prop 8 16] [--weights FILE] [--json OUT] [IMAGE ...]

Rows: gtp (the published setting: mixed graph, M = 8, theta = 0.6, alpha = 0.1,
mixed_attn_max, token scale), gtp-drop (the same setting and selection with
propagation="none": the same tokens dropped instead of propagated), pruning and evit
(the `gtp.methods` presets: CLS-attention selection, no sparsification), and tome.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gtp  # noqa: E402
from gtp.methods import apply_method  # noqa: E402
from gtp.measure.metrics import cosine, features_and_logits  # noqa: E402

WEIGHTS = ROOT.parent / "shared" / "weights" / "vit_small_patch14_dinov2.safetensors"
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")
# (row name, method, options): compared at the same P.
ROWS = (
    ("gtp", "gtp", {}),
    ("gtp-drop", "gtp", {"propagation": "none"}),
    ("pruning", "pruning", {}),
    ("evit", "evit", {}),
    ("tome", "tome", {}),
)


def default_images() -> list[Path]:
    """The real photos in assets/ (the four scikit-image photos, see assets/CREDITS.md)."""
    return [ROOT / "assets" / name for name in PHOTOS if (ROOT / "assets" / name).exists()]


def load_inputs(paths: Sequence[Path], loaded) -> torch.Tensor:
    """The photos as one batch [B, 3, 224, 224], preprocessed as the model expects."""
    from gtp.models import load_image
    return torch.stack([loaded.transform(load_image(p)) for p in paths]).to(loaded.device)


@torch.inference_mode()
def fidelity_rows(model: torch.nn.Module, x: torch.Tensor, amounts: Sequence[int] = (8, 16),
                  rows=ROWS) -> list[dict]:
    """One dict per (P, row): name, method, num_prop, options, gmacs, cosine (mean), per_image."""
    apply_method(model, "full")
    ref, _ = features_and_logits(model, x)
    out = [dict(name="full", method="full", num_prop=0, options={}, gmacs=round(gtp.gmacs(model), 4),
                cosine=1.0, per_image=[1.0] * x.shape[0])]
    for p in amounts:
        for name, method, options in rows:
            apply_method(model, method, p, **options)
            cos = cosine(ref, features_and_logits(model, x)[0])
            out.append(dict(name=name, method=method, num_prop=p, options=options,
                            gmacs=round(gtp.gmacs(model), 4), cosine=round(float(cos.mean()), 6),
                            per_image=[round(float(c), 6) for c in cos]))
    apply_method(model, "full")
    return out


def format_table(rows: list[dict], names: Sequence[str]) -> str:
    head = f"{'method':10} {'P/r':>4} {'GMACs':>7} {'cos mean':>9}  " + "  ".join(f"{n[:9]:>9}" for n in names)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:10} {r['num_prop']:4d} {r['gmacs']:7.3f} {r['cosine']:9.4f}  "
                     + "  ".join(f"{c:9.4f}" for c in r["per_image"]))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", type=Path, help="photos (default: assets/ photos)")
    parser.add_argument("--num-prop", type=int, nargs="+", default=[8, 16], metavar="P")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    from gtp.models import load_model
    if not args.weights.exists():
        print(f"weights not found: {args.weights}", file=sys.stderr)
        return 2
    images = args.images or default_images()
    if not images:
        print("no photos found in assets/; pass image paths", file=sys.stderr)
        return 2
    loaded = load_model("vit_small_patch14_dinov2", weights=args.weights, device="cpu")
    rows = fidelity_rows(loaded.model, load_inputs(images, loaded), args.num_prop)
    print(f"DINOv2 ViT-S/14 (real weights), 224 px, {len(images)} photos: cosine similarity of the "
          f"final CLS feature with the full model's")
    print(format_table(rows, [p.stem for p in images]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
