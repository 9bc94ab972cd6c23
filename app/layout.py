"""The Gradio interface: components, and the events that tie them to inference and figures.

Reading order: the input component, the error wrapper, the handlers (one per kind of event),
then `build_demo`, which lays out the page and wires the events.

Two kinds of events:
  * "run" events (a new photo, new hyper-parameters, the Run button, the `explore` API) run the
    models once, through one shared queue slot (`concurrency_id="gtp_models"`);
  * "view" events (sliders, graph kind, picked token, head) only redraw from the exploration kept
    in the session's `gr.State`; they never touch a model.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import tempfile
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr
from PIL import Image

import gtp
from gtp.models import SUPPORTED_MODELS

from . import figures as F
from .examples import example_paths, load_sweep, published_results
from .inference import (
    COMPARED, DEFAULT_MODEL, METHOD_LABELS, PUBLISHED_SETTINGS, Comparison, Exploration, Settings,
    compare_methods, complete_comparison_gmacs, complete_gmacs, default_batch_size, device_name, explore_photo,
    get_model, measure_throughput, weights_banner,
)
from .photos import open_photo

TITLE = "GTP Explorer: Graph-based Token Propagation on pretrained ViTs"
PAPER = "https://arxiv.org/abs/2311.03035"
LEARN_TEXT = (Path(__file__).with_name("learn.md")).read_text(encoding="utf-8")
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
RUN_QUEUE = dict(concurrency_id="gtp_models", concurrency_limit=1, trigger_mode="always_last")
VIEW_QUEUE = dict(concurrency_id="gtp_views", concurrency_limit=4, trigger_mode="always_last",
                  show_progress="hidden", api_visibility="undocumented")
CSS = """
.gtp-banner-random {background: #fff3cd; border: 1px solid #e0b000; border-radius: 6px; padding: 6px 10px;}
.gtp-banner-ok {background: #e8f5e9; border: 1px solid #66bb6a; border-radius: 6px; padding: 6px 10px;}
"""


def photo_input(**kwargs: Any) -> gr.Image:
    """A gr.Image (type="filepath") that hands the app the uploaded file's path WITHOUT decoding it.

    Stock gr.Image opens the file with PIL before the app sees it, so a damaged file or a
    decompression bomb would fail inside Gradio with an unhelpful message; here
    `app.photos.open_photo` does all decoding, safely. The override is per instance: a subclass
    would make Gradio write a .pyi stub next to this file at import.
    """
    image = gr.Image(type="filepath", **kwargs)

    def preprocess(payload: Any) -> Optional[str]:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # webcam/paste sent inline
            header, _, data = payload.url.partition(",")
            suffix = "." + header.split("/")[-1].split(";")[0] if "/" in header else ".img"
            tmp = tempfile.NamedTemporaryFile(delete=False, suffix=suffix, dir=image.GRADIO_CACHE)
            with tmp, contextlib.suppress(ValueError):  # undecodable: an empty file, reported as such
                tmp.write(base64.b64decode(data))
            return tmp.name
        return payload.path

    image.preprocess = preprocess
    return image


FIGURE_DIR = Path(tempfile.mkdtemp(prefix="gtp_figures_"))
_figure_files: deque = deque()
_FIGURE_FILES_KEPT = 2000  # older figure files are deleted (Gradio has copied them by then)


def deliver(img: Image.Image) -> str:
    """A figure as a JPEG file for an output gr.Image (q 92, no chroma subsampling).

    Encoding ourselves is ~50x faster than letting Gradio write PNGs, and keeps view
    updates within budget; a figure drawn once (cached on the exploration) is written once.
    """
    path = getattr(img, "_gtp_path", None)
    if path is not None and os.path.exists(path):
        return path
    path = str(FIGURE_DIR / f"{uuid.uuid4().hex}.jpg")
    img.save(path, format="JPEG", quality=92, subsampling=0)
    img._gtp_path = path
    _figure_files.append(path)
    while len(_figure_files) > _FIGURE_FILES_KEPT:
        old = _figure_files.popleft()
        with contextlib.suppress(OSError):
            os.remove(old)
    return path


def user_errors(fn: Callable) -> Callable:
    """Turn the app's ValueErrors (bad photo, impossible hyper-parameters, bad files) into a
    gr.Error the person sees; anything else is a bug and is reported as one, without
    taking the server down."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as e:  # PhotoError is a ValueError
            raise gr.Error(str(e), title="Cannot do that") from None
        except Exception as e:  # noqa: BLE001 - keep serving, say what broke
            raise gr.Error(f"Internal error ({type(e).__name__}): {e}", title="Something went wrong") from e
    return wrapper


# ----------------------------------------------------------------------------- text panels


def banner_markdown(exp: Exploration) -> str:
    return weights_banner(exp.model_name, exp.pretrained, exp.weights_message)


def _banner_update(exp: Exploration):
    style = "gtp-banner-ok" if exp.pretrained else "gtp-banner-random"
    return gr.Markdown(banner_markdown(exp), elem_classes=[style])


def metrics_markdown(exp: Exploration) -> str:
    """The prediction panel's numbers; every one measured in this run."""
    p = exp.prediction
    g, lat = p["gmacs"], p["latency_ms"]
    if g is None:
        gmacs_row = "| GMACs per image | counting… | counting… |"
    else:
        gmacs_row = f"| GMACs per image | {g['full']:.3f} | {g['gtp']:.3f} (−{g['reduction_percent']:.1f}%) |"
    lines = []
    if exp.has_head:
        verdict = "✓ **top-1 agrees**" if p["agree"] else "⚠ **top-1 differs**"
        lines.append(f"{verdict}: full says *{p['full']['top5'][0]['label']}*, GTP says "
                     f"*{p['gtp']['top5'][0]['label']}*; {p['top5_overlap']}/5 of the top-5 shared.")
        if not exp.pretrained:
            lines.append("*(Random weights: these classes mean nothing; the costs below are real.)*")
    else:
        lines.append(f"This checkpoint has no classifier head: **cosine similarity of the final features, "
                     f"full vs GTP = {p['feature_cosine_similarity']:.4f}** (1 = identical).")
    lines += [
        "",
        "| measured now | full model | GTP |",
        "|---|---|---|",
        gmacs_row,
        f"| latency (ms) | {lat['full']:.1f} | {lat['gtp']:.1f} |",
        f"| tokens after the last block | {exp.trace.layers[0].tokens_in} | {exp.trace.layers[-1].tokens_out} |",
        "",
        f"Latency: {lat['how']}. GMACs: PyTorch FLOP counter / 2.",
    ]
    if exp.photo.notes:
        lines.append(f"Input: {'; '.join(exp.photo.notes)}.")
    return "\n".join(lines)


def _labels(exp: Exploration) -> tuple[Any, Any]:
    if not exp.has_head:
        return gr.Label(value=None, visible=False), gr.Label(value=None, visible=False)
    tag = "" if exp.pretrained else " (random weights)"
    full = {t["label"]: t["probability"] for t in exp.prediction["full"]["top5"]}
    reduced = {t["label"]: t["probability"] for t in exp.prediction["gtp"]["top5"]}
    g = exp.prediction["gmacs"]
    cost = {k: "GMACs counting…" if g is None else f"{g[k]:.2f} GMACs" for k in ("full", "gtp")}
    return (gr.Label(value=full, label=f"Full model, {cost['full']}{tag}", visible=True),
            gr.Label(value=reduced, label=f"GTP, {cost['gtp']}{tag}", visible=True))


def attention_markdown(stats: dict) -> str:
    return (f"Block {stats['block']}, head {stats['head']}, {stats['tokens']} tokens: sparsification zeroed "
            f"**{100 * stats['zeroed_fraction']:.1f}%** of the entries, which held **{100 * stats['mass_removed']:.1f}%** "
            f"of the attention mass (all heads: {100 * stats['zeroed_fraction_all_heads']:.1f}% zeroed, "
            f"{100 * stats['mass_removed_all_heads']:.1f}% of the mass). Measured in this run.")


def neighbours_markdown(exp: Exploration, kind: str, token: int) -> str:
    gh, gw = exp.trace.grid_size
    near = F.neighbours_of(exp, kind, token)
    parts = [f"**Token {token}** (row {token // gw}, column {token % gw})."]
    if near["spatial"]:
        parts.append(f"Spatial neighbours: {', '.join(map(str, sorted(near['spatial'])))}.")
    if near["semantic"]:
        parts.append(f"Its M = {len(near['semantic'])} most similar tokens (semantic edges): "
                     f"{', '.join(map(str, near['semantic']))}.")
    parts.append("Click a patch on the graph to pick another token.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- handlers


def _settings(model: str, weights: Optional[str], num_prop: float, schedule: str, sparsity: float,
              alpha: float, num_neighbours: float, graph: str, selection: str, propagation: str,
              token_scale: bool) -> Settings:
    """Settings from the raw UI values (sliders send floats)."""
    def whole(value: Any, name: str) -> int:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a whole number; got {value!r}") from None
        if number != int(number):
            raise ValueError(f"{name} must be a whole number; got {value!r}")
        return int(number)
    return Settings(model=model or DEFAULT_MODEL, num_prop=whole(num_prop, "num_prop (P)"),
                    schedule=schedule or "", sparsity=float(sparsity), alpha=float(alpha),
                    num_neighbours=whole(num_neighbours, "num_neighbours (M)"), graph=graph,
                    selection=selection, propagation=propagation, token_scale=bool(token_scale),
                    weights=weights or None)


def _clamp(value: Any, low: int, high: int, default: int) -> int:
    try:
        return min(max(int(value), low), high)
    except (TypeError, ValueError):
        return default


def draw_layer(exp: Optional[Exploration], block: Any):
    """Layer walk panels for block `block` (1-based)."""
    if exp is None:
        return gr.skip(), gr.skip(), gr.skip()
    b = _clamp(block, 1, exp.depth, 1) - 1
    return deliver(F.layer_frame(exp, b)), deliver(F.size_overlay(exp, b)), deliver(F.tokens_chart(exp, b))


def draw_graph(exp: Optional[Exploration], kind: str, token: Any):
    if exp is None:
        return gr.skip(), gr.skip(), gr.skip()
    t = _clamp(token, 0, exp.trace.num_patches - 1, exp.trace.num_patches // 2)
    return deliver(F.graph_figure(exp, kind, t)), deliver(F.similarity_figure(exp, t)), neighbours_markdown(exp, kind, t)


def draw_attention(exp: Optional[Exploration], block: Any, head: Any):
    if exp is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    b = _clamp(block, 1, exp.depth, 1) - 1
    h = _clamp(head, 0, exp.num_heads - 1, 0)
    before, after, stats = F.attention_figures(exp, b, h)
    return deliver(before), deliver(after), attention_markdown(stats), deliver(F.cls_attention_figure(exp, b, h))


_TRADEOFF_CACHE: dict = {}


def draw_tradeoff(exp: Optional[Exploration], sweep: Optional[list]) -> str:
    """The published trade-off with what was measured now (cached: it rarely changes)."""
    gmacs = None if exp is None else exp.prediction["gmacs"]
    current = None if gmacs is None else dict(gmacs, model=exp.model_name)
    key = (json.dumps(current, sort_keys=True), json.dumps(sweep or [], sort_keys=True))
    if key not in _TRADEOFF_CACHE:
        if len(_TRADEOFF_CACHE) > 32:
            _TRADEOFF_CACHE.clear()
        _TRADEOFF_CACHE[key] = F.tradeoff_chart(published_results(), current, sweep or ())
    return deliver(_TRADEOFF_CACHE[key])


def run(photo_path: Optional[str], model: str, weights_file: Optional[str], num_prop: float, schedule: str,
        sparsity: float, alpha: float, num_neighbours: float, graph: str, selection: str, propagation: str,
        token_scale: bool, block: Any, graph_kind: str, token: Any, attn_block: Any, head: Any,
        sweep: Optional[list]):
    """A new photo or new hyper-parameters: run the models once and redraw every panel."""
    if not photo_path:  # the photo was cleared: leave everything as it is
        return [gr.skip()] * len(RUN_OUTPUT_NAMES)
    photo = open_photo(photo_path)
    settings = _settings(model, weights_file, num_prop, schedule, sparsity, alpha, num_neighbours,
                         graph, selection, propagation, token_scale)
    exp = explore_photo(photo, settings, count_gmacs=False)  # GMACs may follow in `fill_gmacs`
    block = _clamp(block, 1, exp.depth, 1)
    attn_block = _clamp(attn_block, 1, exp.depth, 1)
    head = _clamp(head, 0, exp.num_heads - 1, 0)
    token = _clamp(token, 0, exp.trace.num_patches - 1, exp.trace.num_patches // 2)
    full_label, gtp_label = _labels(exp)
    w, h = exp.photo.original_size
    status = f"Ran `{exp.model_name}` on a {w} × {h} photo, on {device_name()}."
    if exp.photo.notes:
        status += f" Input: {'; '.join(exp.photo.notes)}."
    return [
        exp, _banner_update(exp), status, full_label, gtp_label, metrics_markdown(exp),
        gr.Slider(maximum=exp.depth, value=block), *draw_layer(exp, block),
        gr.Number(value=token, maximum=exp.trace.num_patches - 1), *draw_graph(exp, graph_kind, token),
        gr.Slider(maximum=exp.depth, value=attn_block), gr.Slider(maximum=exp.num_heads - 1, value=head),
        *draw_attention(exp, attn_block, head), draw_tradeoff(exp, sweep),
    ]


def fill_gmacs(exp: Optional[Exploration], sweep: Optional[list]):
    """After `run`: count the GMACs of a setting seen for the first time (seconds on a CPU),
    then update the panels that show them."""
    if exp is None or not complete_gmacs(exp):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    full_label, gtp_label = _labels(exp)
    return metrics_markdown(exp), full_label, gtp_label, draw_tradeoff(exp, sweep)


RUN_OUTPUT_NAMES = [
    "state", "banner", "status", "full_label", "gtp_label", "metrics",
    "block", "layer_img", "sizes_img", "tokens_img",
    "token", "graph_img", "similarity_img", "neighbours_md",
    "attn_block", "head", "attn_before", "attn_after", "attn_md", "cls_img", "tradeoff_img",
]


def explore(image: str, model: str = DEFAULT_MODEL, num_prop: float = PUBLISHED_SETTINGS.num_prop,
            schedule: str = "", sparsity: float = PUBLISHED_SETTINGS.sparsity,
            alpha: float = PUBLISHED_SETTINGS.alpha, num_neighbours: float = PUBLISHED_SETTINGS.num_neighbours,
            graph: str = PUBLISHED_SETTINGS.graph, selection: str = PUBLISHED_SETTINGS.selection,
            propagation: str = PUBLISHED_SETTINGS.propagation,
            token_scale: bool = PUBLISHED_SETTINGS.token_scale) -> tuple[dict, dict]:
    """Run the full and the GTP model on an image.

    Returns (prediction, trace summary): the prediction holds both top-5s (or, for a headless
    model, the cosine similarity of the final features), whether top-1 agrees, GMACs and latency
    of each, measured now; the trace summary is `gtp.Trace.summary()`: per block the propagated
    and kept patch ids, token sizes, propagation edges and attention sparsity.
    """
    photo = open_photo(image)
    settings = _settings(model, None, num_prop, schedule, sparsity, alpha, num_neighbours, graph,
                         selection, propagation, token_scale)
    exp = explore_photo(photo, settings)
    return exp.prediction, exp.trace.summary()


def compare_api(image: str, model: str = DEFAULT_MODEL, num_prop: float = PUBLISHED_SETTINGS.num_prop,
                schedule: str = "", sparsity: float = PUBLISHED_SETTINGS.sparsity,
                alpha: float = PUBLISHED_SETTINGS.alpha, num_neighbours: float = PUBLISHED_SETTINGS.num_neighbours,
                graph: str = PUBLISHED_SETTINGS.graph, selection: str = PUBLISHED_SETTINGS.selection,
                propagation: str = PUBLISHED_SETTINGS.propagation,
                token_scale: bool = PUBLISHED_SETTINGS.token_scale) -> dict:
    """GTP (this setting), ToMe and pruning on an image, each removing the same tokens per block.

    Returns the compare view's numbers, all measured now: per method the original patch
    ids removed in each block, tokens per block, top-5, top-1 agreement with the full
    model, KL divergence and cosine similarity to the full model, GMACs.
    """
    photo = open_photo(image)
    settings = _settings(model, None, num_prop, schedule, sparsity, alpha, num_neighbours, graph,
                         selection, propagation, token_scale)
    return compare_methods(explore_photo(photo, settings)).json()


def compare_markdown(exp: Exploration, comp: Comparison) -> str:
    """The compare view's numbers: every one measured on this photo, now."""
    budget = comp.budget
    same = len(set(budget)) == 1
    per_block = f"{budget[0]} per block" if same else f"per block {', '.join(map(str, budget))}"
    lines = [f"**Same photo, same token budget** ({per_block}, {sum(budget)} in all), so the same "
             f"GMACs; each method against the full `{exp.model_name}`."]
    if not exp.pretrained:
        lines.append("*(Random weights: the classes mean nothing; the numbers are still measured on this network.)*")

    def g(value: Optional[float]) -> str:
        return "counting…" if value is None else f"{value:.3f}"

    def short(label: str) -> str:  # "lion, king of beasts, Panthera leo" -> "lion"
        return label.split(",")[0]
    full_g = comp.full_gmacs
    tokens_in = exp.trace.layers[0].tokens_in
    if comp.has_head:
        lines += ["", "| method | GMACs | removed | tokens left | top-1 | agrees | KL | cosine |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {METHOD_LABELS['full']} | {g(full_g)} | 0 | {tokens_in} | {short(comp.full_top5[0]['label'])} | — | 0 | 1 |"]
        for m in comp.methods.values():
            agree = "✓ yes" if m.agree else "✗ no"
            lines.append(f"| {m.label} | {g(m.gmacs)} | {m.num_removed} | {m.tokens_per_block[-1]} | "
                         f"{short(m.top5[0]['label'])} ({100 * m.top5[0]['probability']:.1f}%) | {agree} | "
                         f"{m.kl:.4f} | {m.cosine:.4f} |")
        lines += ["", "*agrees*: top-1 equal to the full model's; *KL*: KL(full ‖ method) of the softmax, in nats; "
                      "*cosine*: cosine similarity of the pre-logits features to the full model's."]
    else:
        lines += ["", "This checkpoint has no classifier head: only the cosine similarity of the final features "
                      "to the full model's.",
                  "", "| method | GMACs | removed | tokens left | cosine of final features |",
                  "|---|---|---|---|---|",
                  f"| {METHOD_LABELS['full']} | {g(full_g)} | 0 | {tokens_in} | 1 |"]
        for m in comp.methods.values():
            lines.append(f"| {m.label} | {g(m.gmacs)} | {m.num_removed} | {m.tokens_per_block[-1]} | {m.cosine:.4f} |")
        lines.append("")
    for m in comp.methods.values():
        if m.num_removed != sum(budget):
            lines.append(f"⚠ {m.label} removed {m.num_removed} tokens, not {sum(budget)}: the budget is more "
                         f"than it can take here (ToMe merges at most half the patch tokens of a block).\n")
    gm = [m.gmacs for m in comp.methods.values()]
    if all(v is not None for v in gm):
        spread = 100 * (max(gm) - min(gm)) / min(gm)
        lines.append(f"GMACs of the three differ by {spread:.2f}% (PyTorch FLOP counter / 2).")
    lines.append(f"Four forwards (full, GTP, ToMe, pruning; batch 1) took {comp.seconds:.2f} s on {device_name()}. "
                 "GTP uses the hyper-parameters on the left; ToMe merges r = P tokens per block (our "
                 "implementation, `gtp.tome`); pruning drops the P tokens the CLS token attends to least "
                 "(`gtp.baselines` preset).")
    return "\n".join(lines)


def draw_compare(exp: Optional[Exploration], block: Any):
    """The compare view at block `block` (1-based), from the cached comparison (no model runs)."""
    if exp is None or exp.comparison is None:
        return [gr.skip()] * len(COMPARED)
    b = _clamp(block, 1, exp.comparison.depth, exp.comparison.depth) - 1
    return [deliver(F.removed_figure(exp, method, b)) for method in COMPARED]


def compare(exp: Optional[Exploration], block: Any):
    """The Compare tab opened (or its button pressed): run GTP, ToMe and pruning on the photo once
    (cached per photo + setting), then draw. GMACs never counted before follow in `fill_compare_gmacs`."""
    if exp is None:
        return [gr.skip()] * (len(COMPARED) + 2)
    comp = compare_methods(exp, count_gmacs=False)
    block = _clamp(block, 1, comp.depth, comp.depth)
    return [gr.Slider(maximum=comp.depth, value=block), *draw_compare(exp, block), compare_markdown(exp, comp)]


def compare_if_open(exp: Optional[Exploration], is_open: bool, block: Any):
    """After a run: refresh the compare view only when it is showing (it costs four forwards)."""
    if not is_open:
        return [gr.skip()] * (len(COMPARED) + 2)
    return compare(exp, block)


def fill_compare_gmacs(exp: Optional[Exploration]):
    if exp is None or exp.comparison is None or not complete_comparison_gmacs(exp):
        return gr.skip()
    return compare_markdown(exp, exp.comparison)


def published_preset():
    """The published setting (P=8, theta=0.6, alpha=0.1, M=8, mixed graph, mixed_attn_max,
    graph propagation, token scale on)."""
    p = gtp.PUBLISHED
    return (p["num_prop"], "", p["sparsity"], p["alpha"], p["num_neighbours"], p["graph"], p["selection"],
            p["propagation"], p["token_scale"])


def throughput(exp: Optional[Exploration], batch_size: Any) -> str:
    if exp is None:
        raise gr.Error("Run a photo first: throughput is measured for the current model and setting.")
    try:
        batch = int(batch_size)
    except (TypeError, ValueError):
        raise ValueError(f"batch size must be a whole number; got {batch_size!r}") from None
    r = measure_throughput(exp.settings, batch, exp.photo)
    return (f"**Measured now** on {r['device']}, batch size {r['batch_size']} ({r['model']}, best of "
            f"{r['timed_batches']} batches after a warm-up): full model **{r['full_img_per_s']:.1f} img/s**, "
            f"GTP **{r['gtp_img_per_s']:.1f} img/s** (×{r['speed_up']:.2f}).")


def load_sweep_file(path: Optional[str], exp: Optional[Exploration]):
    if not path:
        return None, "No sweep loaded.", draw_tradeoff(exp, None)
    records, message = load_sweep(path)
    return records, message + " Shown as “your measurements”.", draw_tradeoff(exp, records)


def downloads(exp: Optional[Exploration]) -> tuple[str, str]:
    """The layer walk as an animated GIF and the trace as JSON (`gtp.Trace.summary()`, with the
    GTP / ToMe / pruning comparison when it was made)."""
    if exp is None:
        raise gr.Error("Run a photo first.")
    folder = Path(tempfile.mkdtemp(prefix="gtp_downloads_"))
    gif = F.animation_gif(exp, str(folder / f"gtp_layers_{exp.model_name}.gif"))
    trace_path = folder / f"gtp_trace_{exp.model_name}.json"
    summary = {"prediction": exp.prediction, "trace": exp.trace.summary()}
    if exp.comparison is not None:
        summary["comparison"] = exp.comparison.json()
    trace_path.write_text(json.dumps(summary), encoding="utf-8")
    return gif, str(trace_path)


def startup(photo_path: Optional[str]):
    """On page load: say at once whether real weights are loaded, and show the first example
    (unless a photo is already there)."""
    loaded = get_model(DEFAULT_MODEL).loaded
    text = weights_banner(loaded.name, loaded.pretrained, loaded.message)
    examples = example_paths()
    banner = gr.Markdown(text, elem_classes=["gtp-banner-ok" if loaded.pretrained else "gtp-banner-random"])
    photo = examples[0] if examples and not photo_path else gr.skip()
    return photo, banner


def toggle_play(playing: bool, block: Any, exp: Optional[Exploration]):
    """Play / pause the layer walk; playing from the last block starts again at block 1."""
    if exp is None:
        return gr.skip(), gr.skip(), False, gr.skip()
    playing = not playing
    restart = playing and _clamp(block, 1, exp.depth, 1) >= exp.depth
    return (gr.Timer(active=playing), gr.Button("⏸ Pause" if playing else "▶ Play"), playing,
            1 if restart else gr.skip())


def advance(block: Any, exp: Optional[Exploration]):
    """One tick of the animation: the next block, stopping after the last."""
    if exp is None:
        return gr.skip(), gr.Timer(active=False), gr.Button("▶ Play"), False
    depth = exp.depth
    nxt = _clamp(block, 1, depth, 1) + 1
    if nxt >= depth:
        return depth, gr.Timer(active=False), gr.Button("▶ Play"), False
    return nxt, gr.skip(), gr.skip(), gr.skip()


# ----------------------------------------------------------------------------- the page


def build_demo() -> gr.Blocks:
    """The whole app (not launched)."""
    selections = list(gtp.SELECTIONS)
    with gr.Blocks(title="GTP Explorer") as demo:
        state = gr.State(None)
        sweep_state = gr.State(None)
        playing = gr.State(False)
        gr.Markdown(f"# {TITLE}\nAn interactive look at [GTP-ViT (Xu et al., WACV 2024)]({PAPER}): "
                    "watch a ViT drop tokens block by block and push them along a token graph, with no retraining.")
        banner = gr.Markdown("Loading the default model…", elem_id="gtp-banner")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                photo = photo_input(label="Photo (upload, paste or webcam)", image_mode=None,
                                   sources=["upload", "clipboard", "webcam"], height=300, elem_id="gtp-photo")
                gr.Examples(examples=[[p] for p in example_paths()], inputs=[photo], label="Example photos (CC0 / public domain)")
                model = gr.Dropdown([(f"{name}: {text}", name) for name, text in SUPPORTED_MODELS.items()],
                                    value=DEFAULT_MODEL, label="Model", elem_id="gtp-model")
                with gr.Accordion("Your own weights", open=False):
                    weights = gr.File(label="Weights file for the chosen model (.safetensors / .pth)",
                                      file_types=[".safetensors", ".pth", ".pt", ".bin"], type="filepath")
                    gr.Markdown("Or set the environment variable `GTP_WEIGHTS_DIR` to a folder holding "
                                "`<model name>.safetensors` before starting the app.")
                with gr.Accordion("GTP hyper-parameters", open=True):
                    num_prop = gr.Slider(0, 64, value=gtp.PUBLISHED["num_prop"], step=1, label="P (num_prop): tokens propagated per block")
                    schedule = gr.Textbox(value="", label="Per-block P schedule (optional)",
                                          placeholder="e.g. 0,0,8,8,8,8,8,8,8,8,8,8 — one per block; overrides P",
                                          info="Press Enter to apply.")
                    sparsity = gr.Slider(0.05, 1.0, value=gtp.PUBLISHED["sparsity"], step=0.05, label="θ (sparsity): share of attention entries kept (1 = off)")
                    alpha = gr.Slider(0.0, 1.0, value=gtp.PUBLISHED["alpha"], step=0.01, label="α (alpha): weight of propagated features")
                    num_neighbours = gr.Slider(1, 32, value=gtp.PUBLISHED["num_neighbours"], step=1, label="M (num_neighbours): semantic graph neighbours")
                    graph = gr.Dropdown(list(gtp.GRAPHS), value=gtp.PUBLISHED["graph"], label="Graph")
                    selection = gr.Dropdown(selections, value=gtp.PUBLISHED["selection"], label="Selection")
                    propagation = gr.Dropdown(list(gtp.PROPAGATIONS), value=gtp.PUBLISHED["propagation"], label="Propagation")
                    token_scale = gr.Checkbox(value=gtp.PUBLISHED["token_scale"], label="Token scale (proportional attention)")
                    preset = gr.Button("Published setting", elem_id="gtp-preset")
                run_button = gr.Button("Run", variant="primary", elem_id="gtp-run")
                status = gr.Markdown("", elem_id="gtp-status")
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Prediction", id="prediction") as tab_prediction:
                        with gr.Row():
                            full_label = gr.Label(num_top_classes=5, label="Full model", elem_id="gtp-full")
                            gtp_label = gr.Label(num_top_classes=5, label="GTP", elem_id="gtp-gtp")
                        metrics = gr.Markdown("", elem_id="gtp-metrics")
                    with gr.Tab("Layer walk", id="layers") as tab_layers:
                        with gr.Row():
                            block = gr.Slider(1, 12, value=1, step=1, label="Block", elem_id="gtp-block", scale=4)
                            play = gr.Button("▶ Play", scale=1, elem_id="gtp-play")
                        with gr.Row():
                            layer_img = _figure_image("Tokens propagated in this block", "gtp-layer")
                            sizes_img = _figure_image("Token sizes", "gtp-sizes")
                        tokens_img = _figure_image("Tokens remaining per block", "gtp-tokens", height=None)
                        gr.Markdown("Red: propagated in this block. Dark: propagated earlier. Yellow lines: from each "
                                    "propagated token to the tokens receiving its features, thicker for a larger weight α·W.")
                    with gr.Tab("Graphs", id="graphs") as tab_graphs:
                        with gr.Row():
                            graph_kind = gr.Radio(list(F.GRAPH_KINDS), value="spatial + semantic", label="Show", elem_id="gtp-graph-kind")
                            token = gr.Number(value=98, precision=0, minimum=0, label="Token (or click the graph)", elem_id="gtp-token")
                        with gr.Row():
                            graph_img = _figure_image("Token graph (click a patch)", "gtp-graph")
                            similarity_img = _figure_image("Semantic similarity", "gtp-similarity")
                        neighbours_md = gr.Markdown("")
                    with gr.Tab("Attention", id="attention") as tab_attention:
                        with gr.Row():
                            attn_block = gr.Slider(1, 12, value=1, step=1, label="Block", elem_id="gtp-attn-block")
                            head = gr.Slider(0, 5, value=0, step=1, label="Head", elem_id="gtp-head")
                        with gr.Row():
                            attn_before = _figure_image("Before sparsification", "gtp-attn-before")
                            attn_after = _figure_image("After sparsification", "gtp-attn-after")
                        attn_md = gr.Markdown("")
                        cls_img = _figure_image("CLS attention over the photo", "gtp-cls")
                    with gr.Tab("Compare", id="compare", elem_id="gtp-compare-tab") as compare_tab:
                        gr.Markdown("GTP, ToMe and pruning on the same photo with the same number of tokens removed "
                                    "per block (P). Each patch is shaded by the block in which its token left: "
                                    "propagated (GTP), merged into a partner (ToMe) or dropped (pruning).")
                        with gr.Row():
                            compare_block = gr.Slider(1, 12, value=12, step=1, label="Up to block",
                                                      elem_id="gtp-compare-block", scale=4)
                            compare_button = gr.Button("Compare", scale=1, elem_id="gtp-compare")
                        with gr.Row():
                            compare_imgs = [_figure_image(f"{METHOD_LABELS[m]}: tokens removed", f"gtp-compare-{m}",
                                                          height=None) for m in COMPARED]
                        compare_md = gr.Markdown("Open this tab or press *Compare* to run the three methods.",
                                                 elem_id="gtp-compare-md")
                    with gr.Tab("Trade-off", id="tradeoff") as tab_tradeoff:
                        tradeoff_img = _figure_image("Top-1 vs GMACs", "gtp-tradeoff", height=None)
                        with gr.Row():
                            batch_size = gr.Number(value=default_batch_size(), precision=0, minimum=1, maximum=256,
                                                   label="Batch size", scale=1)
                            measure = gr.Button("Measure throughput", scale=1, elem_id="gtp-measure")
                        throughput_md = gr.Markdown(f"Throughput is measured on this server ({device_name()}) when you press the button.")
                        sweep_file = gr.File(label="Your sweep results (JSON or CSV from `python -m gtp sweep`)",
                                             file_types=[".json", ".csv"], type="filepath")
                        sweep_md = gr.Markdown("")
                    with gr.Tab("Learn", id="learn") as tab_learn:
                        gr.Markdown(LEARN_TEXT, latex_delimiters=LATEX)
                        gr.Markdown("### Downloads")
                        make_downloads = gr.Button("Prepare the layer-walk GIF and the trace JSON", elem_id="gtp-downloads")
                        with gr.Row():
                            gif_file = gr.File(label="Layer walk (GIF)")
                            trace_file = gr.File(label="Trace (JSON)")
        compare_open = gr.State(False)
        timer = gr.Timer(0.8, active=False)
        # Hidden outputs of the `explore` API endpoint.
        api_prediction = gr.JSON(visible=False, label="prediction")
        api_summary = gr.JSON(visible=False, label="trace_summary")
        api_trigger = gr.Button(visible=False)
        api_comparison = gr.JSON(visible=False, label="comparison")
        api_compare_trigger = gr.Button(visible=False)

        # --- run events: the models run once per new photo or setting
        controls = [model, weights, num_prop, schedule, sparsity, alpha, num_neighbours, graph, selection,
                    propagation, token_scale]
        run_inputs = [photo, *controls, block, graph_kind, token, attn_block, head, sweep_state]
        outputs = dict(state=state, banner=banner, status=status, full_label=full_label, gtp_label=gtp_label,
                       metrics=metrics, block=block, layer_img=layer_img, sizes_img=sizes_img, tokens_img=tokens_img,
                       token=token, graph_img=graph_img, similarity_img=similarity_img, neighbours_md=neighbours_md,
                       attn_block=attn_block, head=head, attn_before=attn_before, attn_after=attn_after,
                       attn_md=attn_md, cls_img=cls_img, tradeoff_img=tradeoff_img)
        run_outputs = [outputs[name] for name in RUN_OUTPUT_NAMES]
        run_fn = user_errors(run)
        triggers = [photo.change, run_button.click, model.input, weights.upload, schedule.submit,
                    graph.input, selection.input, propagation.input, token_scale.input,
                    num_prop.release, sparsity.release, alpha.release, num_neighbours.release]
        gmacs_args = dict(fn=user_errors(fill_gmacs), inputs=[state, sweep_state],
                          outputs=[metrics, full_label, gtp_label, tradeoff_img], api_visibility="undocumented",
                          show_progress="hidden", **RUN_QUEUE)
        compare_outputs = [compare_block, *compare_imgs, compare_md]
        compare_gmacs_args = dict(fn=user_errors(fill_compare_gmacs), inputs=[state], outputs=[compare_md],
                                  api_visibility="undocumented", show_progress="hidden", **RUN_QUEUE)
        compare_after_run = dict(fn=user_errors(compare_if_open), inputs=[state, compare_open, compare_block],
                                 outputs=compare_outputs, api_visibility="undocumented", **RUN_QUEUE)
        gr.on(triggers, run_fn, inputs=run_inputs, outputs=run_outputs, api_visibility="undocumented",
              **RUN_QUEUE).success(**gmacs_args).success(**compare_after_run).success(**compare_gmacs_args)
        preset.click(published_preset, outputs=[num_prop, schedule, sparsity, alpha, num_neighbours, graph,
                                                 selection, propagation, token_scale],
                     api_visibility="undocumented").then(
            run_fn, inputs=run_inputs, outputs=run_outputs, api_visibility="undocumented", **RUN_QUEUE
        ).success(**gmacs_args).success(**compare_after_run).success(**compare_gmacs_args)
        api_trigger.click(user_errors(explore), inputs=[photo, *[c for c in controls if c is not weights]],
                          outputs=[api_prediction, api_summary], api_name="explore", **RUN_QUEUE)
        api_compare_trigger.click(user_errors(compare_api), inputs=[photo, *[c for c in controls if c is not weights]],
                                  outputs=[api_comparison], api_name="compare", **RUN_QUEUE)
        measure.click(user_errors(throughput), inputs=[state, batch_size], outputs=[throughput_md],
                      api_visibility="undocumented", **RUN_QUEUE)

        # --- the compare view: three more forwards, only when it is asked for (cached per photo + setting)
        gr.on([compare_tab.select, compare_button.click], lambda: True, outputs=[compare_open],
              api_visibility="undocumented", show_progress="hidden", queue=False).then(
            user_errors(compare), inputs=[state, compare_block], outputs=compare_outputs,
            api_visibility="undocumented", **RUN_QUEUE).success(**compare_gmacs_args)
        for tab in (tab_prediction, tab_layers, tab_graphs, tab_attention, tab_tradeoff, tab_learn):
            tab.select(lambda: False, outputs=[compare_open], api_visibility="undocumented",
                       show_progress="hidden", queue=False)

        # --- view events: redraw from the exploration in `state`, never rerun a model
        block.change(user_errors(draw_layer), inputs=[state, block], outputs=[layer_img, sizes_img, tokens_img], **VIEW_QUEUE)
        compare_block.change(user_errors(draw_compare), inputs=[state, compare_block], outputs=compare_imgs, **VIEW_QUEUE)
        gr.on([graph_kind.change, token.change], user_errors(draw_graph), inputs=[state, graph_kind, token],
              outputs=[graph_img, similarity_img, neighbours_md], **VIEW_QUEUE)
        graph_img.select(_pick_token, inputs=[state], outputs=[token], **VIEW_QUEUE)
        similarity_img.select(_pick_token, inputs=[state], outputs=[token], **VIEW_QUEUE)
        gr.on([attn_block.change, head.change], user_errors(draw_attention), inputs=[state, attn_block, head],
              outputs=[attn_before, attn_after, attn_md, cls_img], **VIEW_QUEUE)
        sweep_file.change(user_errors(load_sweep_file), inputs=[sweep_file, state],
                          outputs=[sweep_state, sweep_md, tradeoff_img], **VIEW_QUEUE)
        make_downloads.click(user_errors(downloads), inputs=[state], outputs=[gif_file, trace_file],
                             api_visibility="undocumented")
        play.click(toggle_play, inputs=[playing, block, state], outputs=[timer, play, playing, block],
                   api_visibility="undocumented", show_progress="hidden")
        timer.tick(advance, inputs=[block, state], outputs=[block, timer, play, playing],
                   api_visibility="undocumented", show_progress="hidden", trigger_mode="always_last")
        demo.load(user_errors(startup), inputs=[photo], outputs=[photo, banner], api_visibility="undocumented")
    return demo


def create_app() -> gr.Blocks:
    """The app with its queue: one model run at a time (CPU-bound), up to 64 waiting."""
    demo = build_demo()
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def _figure_image(label: str, elem_id: str, height: Optional[int] = 460) -> gr.Image:
    """An output image for a figure (handlers return JPEG paths from `deliver`)."""
    return gr.Image(label=label, type="filepath", interactive=False, elem_id=elem_id,
                    height=height, buttons=["download", "fullscreen"])


def _pick_token(exp: Optional[Exploration], evt: gr.SelectData):
    """A click on a photo panel picks the patch under it."""
    if exp is None or not evt.index:
        return gr.skip()
    x, y = float(evt.index[0]), float(evt.index[1])
    if not (0 <= x < F.DISPLAY and 0 <= y < F.DISPLAY):  # e.g. on a colour bar
        return gr.skip()
    return F.token_at(exp, x, y)
