"""A small page with the interactive layer walk (slider + Play, all in the browser) and the
trade-off chart, from a seeded random DeiT-S on assets/chelsea.png: for checking the plotly
figures of app/plots.py in a browser (tests/test_plots_browser.py drives it).

    python scripts/plots_demo.py [--port 7861] [--model deit_small_patch16_224]

The weights are random (nothing is downloaded): the predictions would be meaningless, but
the selection, propagation and sparsification are real computations of this network, and
the GMACs are counted now.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import numpy as np
import timm
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gtp  # noqa: E402
from app import plots  # noqa: E402

PHOTO = ROOT / "assets" / "chelsea.png"


class Demo(NamedTuple):
    blocks: gr.Blocks
    trace: gtp.Trace
    walk: object          # the layer walk figure shown
    tradeoff: object      # the trade-off figure shown


def traced_run(model_name: str, photo_path: Path, seed: int = 0) -> tuple[Image.Image, gtp.Trace, dict]:
    """(photo as the model sees it, trace of the GTP forward, measured GMACs {full, gtp})."""
    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False).eval()
    cfg = model.pretrained_cfg
    size = cfg["input_size"][1:]
    photo = Image.open(photo_path).convert("RGB").resize(size[::-1], Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    full = gtp.gmacs(model, img_size=size[0])
    gtp.patch(model)
    with torch.inference_mode(), gtp.trace(model, attention=False) as rec:
        model(x)
    return photo, rec, {"full": full, "gtp": gtp.gmacs(model, img_size=size[0])}


def build_demo(model_name: str = "deit_small_patch16_224", photo_path: Path = PHOTO) -> Demo:
    photo, rec, gmacs = traced_run(model_name, photo_path)
    published = json.loads((ROOT / "assets" / "published_results.json").read_text())
    walk = plots.layer_walk_figure(photo, rec)
    tradeoff = plots.tradeoff_figure(published, model_name, current=gmacs)
    with gr.Blocks(title="GTP plots demo") as blocks:
        gr.Markdown(f"**Layer walk** of a randomly initialised `{model_name}` (published GTP setting). "
                    "Hover a token; drag the slider or press Play: both run in the browser.")
        gr.Plot(value=walk, elem_id=plots.WALK_ELEM_ID, show_label=False)
        play = gr.Button("Play / pause", elem_id="gtp-play")
        play.click(None, js=plots.PLAY_JS)
        gr.Plot(value=tradeoff, elem_id="gtp-tradeoff-plot", show_label=False)
    return Demo(blocks, rec, walk, tradeoff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--model", default="deit_small_patch16_224")
    args = parser.parse_args()
    build_demo(args.model).blocks.launch(server_name="127.0.0.1", server_port=args.port)


if __name__ == "__main__":
    main()
