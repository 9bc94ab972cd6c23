"""The markdown the page shows: every number in it was measured in this run (or is labelled)."""
from __future__ import annotations

from typing import Optional

from gtp import methods
from gtp.measure.crossover import crossover_sentence

from ..core.inference import STARTING_NOTE
from ..core.limits import MAX_UPLOAD_BYTES
from ..core.models import weights_banner
from ..core.results import Costs, Exploration, Throughput
from ..views.graphs import neighbours_of

UPLOAD_NOTE = (f"Uploads up to {MAX_UPLOAD_BYTES // 2**20} MB (room for deit_base weights, ~346 MB); "
               "larger files are refused.")


NO_PHOTO = ("**No photo.** Upload one, paste one or pick an example photo to run the models; until then the "
            "tabs keep showing the last photo's results.")


def banner_markdown(exp: Exploration) -> str:
    return weights_banner(exp.model_name, exp.pretrained, exp.model.weights_message, exp.has_head)


def backbone_markdown(exp: Exploration) -> str:
    """A backbone's own result, in place of the classes it does not have: how close GTP's final
    features are to the full model's on this photo (measured in this run)."""
    note = "" if exp.pretrained else " *(Random weights: these features describe a random network, not the photo.)*"
    return (f"`{exp.model_name}` has no classes: it outputs features. **Cosine similarity of the final "
            f"features, GTP vs the full model: {exp.run.feature_cosine:.4f}** (1 = identical), on this photo."
            f"{note}\n\nBelow, each patch's final feature, its first three PCA components (fitted on the full "
            "model's patches) as red, green and blue; GTP's patches in the same colours, so a patch that keeps "
            "its colour kept its meaning.")


def status_markdown(exp: Exploration) -> str:
    w, h = exp.photo_size
    status = f"Ran `{exp.model_name}` on a {w} × {h} photo, on {exp.run.device}."
    if exp.photo_notes:
        status += f" Input: {'; '.join(exp.photo_notes)}."
    if exp.run.note:
        status += " " + exp.run.note
    return status + schedule_note(exp)


def schedule_note(exp: Exploration) -> str:
    """What GTP actually removed, when it is less than asked (a block cannot propagate more
    tokens than it still has): '' when every block removed its P."""
    asked = exp.settings.budget(exp.depth)
    done = [len(layer.propagated[0]) for layer in exp.trace.layers]
    if done == asked:
        return ""
    return (f" ⚠ GTP was asked to propagate {sum(asked)} tokens ({', '.join(map(str, asked))} per block) and "
            f"propagated {sum(done)} ({', '.join(map(str, done))}): a block removes at most the tokens it "
            "still has.")


def _g(value: Optional[float]) -> str:
    return "counting…" if value is None else f"{value:.3f}"


def metrics_markdown(exp: Exploration, costs: Costs) -> str:
    """The prediction panel's numbers; every one measured in this run."""
    run = exp.run
    full, reduced = costs.of("full"), costs.of("gtp")
    if full is None or reduced is None:
        gmacs_row = "| GMACs per image | counting… | counting… |"
    else:
        gmacs_row = f"| GMACs per image | {full:.3f} | {reduced:.3f} (−{100 * (1 - reduced / full):.1f}%) |"
    lines = []
    if exp.has_head:
        agree = run.full_top5[0].index == run.gtp_top5[0].index
        overlap = len({t.index for t in run.full_top5} & {t.index for t in run.gtp_top5})
        verdict = "✓ **top-1 agrees**" if agree else "⚠ **top-1 differs**"
        lines.append(f"{verdict}: full says *{run.full_top5[0].label}*, GTP says "
                     f"*{run.gtp_top5[0].label}*; {overlap}/5 of the top-5 shared.")
        if not exp.pretrained:
            lines.append("*(Random weights: these classes mean nothing; the costs below are real.)*")
    full_ms, gtp_ms = run.latency_ms
    lines += [
        "",
        "| measured now | full model | GTP |",
        "|---|---|---|",
        gmacs_row,
        f"| latency (ms) | {full_ms:.1f} | {gtp_ms:.1f} |",
        f"| tokens after the last block | {exp.trace.layers[0].tokens_in} | {exp.trace.layers[-1].tokens_out} |",
        "",
        f"Latency: {latency_how(exp)}. GMACs: PyTorch FLOP counter / 2.",
    ]
    if STARTING_NOTE in exp.run.note:
        lines.append(f"⚠ {STARTING_NOTE}")
    if exp.photo_notes:
        lines.append(f"Input: {'; '.join(exp.photo_notes)}.")
    return "\n".join(lines)


def latency_how(exp: Exploration) -> str:
    return (f"one forward each (the full model runs once per photo; GTP timed after a traced forward), "
            f"batch 1, on {exp.run.device}")


def attention_markdown(stats: dict) -> str:
    return (f"Block {stats['block']}, head {stats['head']}, {stats['tokens']} tokens: sparsification zeroed "
            f"**{100 * stats['zeroed_fraction']:.1f}%** of the entries, which held **{100 * stats['mass_removed']:.1f}%** "
            f"of the attention mass (all heads: {100 * stats['zeroed_fraction_all_heads']:.1f}% zeroed, "
            f"{100 * stats['mass_removed_all_heads']:.1f}% of the mass). Measured in this run.")


def neighbours_markdown(exp: Exploration, kind: str, token: int) -> str:
    gh, gw = exp.trace.grid_size
    near = neighbours_of(exp, kind, token)
    parts = [f"**Token {token}** (row {token // gw}, column {token % gw})."]
    if near["spatial"]:
        parts.append(f"Spatial neighbours: {', '.join(map(str, sorted(near['spatial'])))}.")
    if near["semantic"]:
        parts.append(f"Its M = {len(near['semantic'])} most similar tokens (semantic edges): "
                     f"{', '.join(map(str, near['semantic']))}.")
    parts.append("Hover any token of the graph for its neighbours and their cosine similarity; "
                 "type a token number to draw its edges and centre the similarity map on it.")
    return " ".join(parts)


def _short(label: str) -> str:  # "lion, king of beasts, Panthera leo" -> "lion"
    return label.split(",")[0]


def also(method: str, exp: Exploration) -> str:
    """What the method approximates besides removing tokens, for this run's setting."""
    if method == "gtp":
        theta, scale = exp.settings.config.sparsity, exp.settings.config.token_scale
        parts = ([f"θ = {theta:g}: zeroes {100 * (1 - theta):.0f}% of attention entries"] if theta < 1 else [])
        parts += ["token-size attention"] if scale else []
        return "; ".join(parts) or "nothing else (θ = 1, no token scale)"
    if method == "gtp_dense":
        return "θ = 1" + ("; token-size attention" if exp.settings.config.token_scale else "")
    return methods.get(method).adds


def _compare_table(exp: Exploration, costs: Costs) -> list[str]:
    comp = exp.comparison
    tokens_in = exp.trace.layers[0].tokens_in
    full = methods.get("full").label
    if exp.has_head:
        lines = ["", "| method | GMACs | tokens left | top-1 | agrees | KL | cosine | also approximates |",
                 "|---|---|---|---|---|---|---|---|",
                 f"| {full} | {_g(costs.of('full'))} | {tokens_in} | {_short(comp.full_top5[0].label)} | — | 0 | 1 | — |"]
        for m in comp.methods:
            agree = "✓ yes" if m.agree else "✗ no"
            lines.append(f"| {m.label} | {_g(costs.of(m.method))} | {m.tokens_per_block[-1]} | "
                         f"{_short(m.top5[0].label)} ({100 * m.top5[0].probability:.1f}%) | {agree} | "
                         f"{m.kl:.4f} | {m.cosine:.4f} | {also(m.method, exp)} |")
        return lines + ["", "*agrees*: top-1 equal to the full model's; *KL*: KL(full ‖ method) of the softmax, "
                            "in nats; *cosine*: cosine similarity of the pre-logits features to the full model's."]
    lines = ["", "This checkpoint has no classifier head: only the cosine similarity of the final features "
                 "to the full model's.",
             "", "| method | GMACs | tokens left | cosine of final features | also approximates |",
             "|---|---|---|---|---|",
             f"| {full} | {_g(costs.of('full'))} | {tokens_in} | 1 | — |"]
    for m in comp.methods:
        lines.append(f"| {m.label} | {_g(costs.of(m.method))} | {m.tokens_per_block[-1]} | "
                     f"{m.cosine:.4f} | {also(m.method, exp)} |")
    return lines + [""]


def compare_markdown(exp: Exploration, costs: Costs) -> str:
    """The compare view's numbers: every one measured on this photo, now."""
    comp = exp.comparison
    budget = comp.budget
    per_block = f"{budget[0]} per block" if len(set(budget)) == 1 else f"per block {', '.join(map(str, budget))}"
    lines = [f"**Same photo, matched GMACs**: every method but Downsample removes the same tokens "
             f"({per_block}, {sum(budget)} in all); Downsample runs the unpatched model on a smaller image "
             f"costing about what GTP does. Each against the full `{exp.model_name}`. The last column names "
             "what a method changes besides removing tokens: GTP alone also sparsifies attention, so "
             "*GTP (θ = 1)* runs the same setting without it, side by side."]
    if not exp.pretrained:
        lines.append("*(Random weights: the classes mean nothing; the numbers are still measured on this network.)*")
    lines += _compare_table(exp, costs)
    for m in comp.methods:
        if methods.get(m.method).how.verb != "kept" and m.num_removed != sum(budget):
            lines.append(f"⚠ {m.label} removed {m.num_removed} tokens, not {sum(budget)}: the budget is more "
                         f"than it can take here (ToMe and PiToMe merge at most half the patch tokens of a block).\n")
    removing = [m for m in comp.methods if methods.get(m.method).how.verb != "kept"]
    gm = [costs.of(m.method) for m in removing]
    if all(v is not None for v in gm):
        spread = 100 * (max(gm) - min(gm)) / min(gm)
        lines.append(f"GMACs of the {_COUNT.get(len(gm), len(gm))} methods that remove tokens differ by {spread:.2f}% "
                     "(PyTorch FLOP counter / 2).")
        gtp_cost = costs.of("gtp")
        for m in comp.methods:
            if m not in removing and costs.of(m.method) is not None and gtp_cost:
                lines.append(f"{m.label}'s GMACs are {100 * (costs.of(m.method) / gtp_cost - 1):+.1f}% of GTP's: "
                             f"the nearest patch grid ({m.tokens_per_block[-1]} tokens in every block).")
    lines.append(f"The forwards of the full model and the {len(comp.methods)} methods (batch 1) took "
                 f"{comp.seconds:.2f} s on {exp.run.device}. "
                 + " ".join(f"{m.label} {methods.get(m.method).about}." for m in comp.methods))
    return "\n".join(lines)


_COUNT = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def throughput_markdown(r: Throughput, faster_at: Optional[int] = None) -> str:
    """faster_at: the smallest batch size measured in this session at which GTP beat the full model."""
    text = (f"**Measured now** on {r.device}, batch size {r.batch_size}, {r.mode} ({r.model}, best of "
            f"{r.timed_batches} batch(es), a warm-up batch dropped when time allowed; the measurement held the model "
            f"{r.seconds:.1f} s): full model **{r.full_img_per_s:.1f} img/s**, "
            f"GTP **{r.gtp_img_per_s:.1f} img/s** (×{r.speed_up:.2f}).")
    if r.speed_up < 1:
        text += (f" **GTP is not faster than the full model at batch size {r.batch_size} here**; "
                 + (f"it was at batch size {faster_at} (measured)." if faster_at else
                    "no batch size measured so far beats it: try a larger one."))
        modelled = crossover_sentence()
        text += f"\n\n{modelled}" if modelled else ""
    return text


def curves_markdown(record: dict) -> str:
    """What the measured curves are: every point measured on this server, on the bundled photos."""
    what = "top-1 agreement with the full model" if record.get("has_head") else "cosine of the final features to the full model's"
    weights = "" if record.get("pretrained") else " (random weights: the curves describe this random network)"
    return (f"**Measured curves** for `{record['model']}`{weights}: {what} against GMACs, per method at P = 4, 8, 12 "
            f"and 16 (matched GMACs at each P), on {record['views']} views of {record['photos']} bundled photos; "
            "dashed, on the right axis, labelled \"measured on N photos\". Measured once per model and weights, "
            "then read from disk. `python -m gtp fidelity` measures more views.")


def throughput_intro(device: str, max_batch: int, budget_s: float) -> str:
    modelled = crossover_sentence()
    return (f"Throughput is measured on this server ({device}) when you press the button: batch sizes up "
            f"to {max_batch}, and as many timed batches as fit in {budget_s:g} s, so no one holds the "
            "model for long." + (f"\n\n{modelled}" if modelled else ""))
