"""The lesson: GTP in seven steps, told on the run on view.

Each step is two or three sentences that quote this run's numbers, the formula of `SPEC.md` it
illustrates, and one figure of this run drawn by the tabs' own builders (`app.views`) with the
patch the text names highlighted. The lesson follows ONE token (`focus`): the first to leave
(the lowest score of the first block that propagated any). Every number is read here from the
run's trace and results (`facts`), never typed in; a step change draws from the run and the
figure cache, so no model runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from gradio.components.plot import PlotData

from gtp.kernels import num_zeroed

from ..core.results import Costs, Exploration
from ..views import attention, graphs, walk
from ..views.base import edges_of, numpy, patch_name, ranks

TITLES = ("Tokens and attention", "Regeneration difficulty and broadcasting ability", "Which P tokens leave",
          "The spatial and semantic graph", "Propagation", "Attention sparsification", "Prediction and cost")
NUM_STEPS = len(TITLES)
LISTED = 8   # ids (with their numbers) a sentence lists at most
GRAPH_KIND = {"mixed": "spatial + semantic", "spatial": "spatial", "semantic": "semantic"}  # setting -> graph view
SCORES = {   # selection family -> (the score of patch j in LaTeX, in words); SPEC.md section 3
    "mixed_attn": (r"R_j \times B_j", "regeneration difficulty × broadcasting ability"),
    "sum_attn": (r"R_j + B_j", "regeneration difficulty + broadcasting ability"),
    "diag_attn": (r"R_j", "regeneration difficulty alone"),
    "img_attn": (r"B_j", "broadcasting ability alone"),
    "cls_attn": (r"A_h[0, j]", "the CLS token's attention to the token"),
    "cos_sim": (r"-\sum_i \cos(A[j], A[i])", "minus the cosine similarity of its attention row to the others'"),
    "random": (r"u_j \sim U(0, 1)", "uniform noise (a control)"),
}


def counter(step: int) -> str:
    return f"**Step {step} of {NUM_STEPS}**"


def step_of(value: object) -> int:
    """A lesson step (1-based) from any value: clamped to 1..NUM_STEPS, 1 when not a number."""
    try:
        return min(max(int(value), 1), NUM_STEPS)   # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 1


# ----------------------------------------------------------------------------- the facts of a run


@dataclass(frozen=True)
class Focus:
    """The patch the lesson follows, and where: `block` (0-based) is the block it left in, None
    when no token left anywhere (then it is the middle patch, looked at in block 1); `index` its
    position among that block's candidates; `head` the head where its own attention A[j, j] is
    largest in that block (the one the attention steps show)."""
    token: int
    block: Optional[int]
    index: int
    head: int

    @property
    def shown_block(self) -> int:
        return 0 if self.block is None else self.block


def focus(exp: Exploration) -> Focus:
    trace = exp.trace
    for layer in trace.layers:
        cand = numpy(layer.candidates).tolist()
        left = [p for p in numpy(layer.propagated).tolist() if p >= 0]
        if left:
            score = numpy(layer.score)
            token = left[0] if score is None else min(left, key=lambda p: (score[cand.index(p)], cand.index(p)))
            return Focus(int(token), layer.block, cand.index(token), _own_head(exp, layer.block, cand.index(token)))
    token = trace.num_patches // 2
    index = numpy(trace.layers[0].candidates).tolist().index(token)
    return Focus(token, None, index, _own_head(exp, 0, index))


def _own_head(exp: Exploration, block: int, index: int) -> int:
    after = exp.trace.layers[block].attn_after
    if after is None:
        return 0
    k = exp.trace.num_prefix + index
    return int(after[0, :, k, k].float().argmax())


def _maps(exp: Exploration, block: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    layer = exp.trace.layers[block]
    return (layer.attn_before[0, head].float().numpy().astype(np.float64),
            layer.attn_after[0, head].float().numpy().astype(np.float64))


def attention_facts(exp: Exploration, f: Focus) -> dict:
    """Step 1: what the CLS token attends to in head 0 of block 1 (after sparsification)."""
    trace, out = exp.trace, {"prefix": exp.trace.num_prefix, "tokens": exp.trace.layers[0].tokens_in,
                             "heads": exp.num_heads, "grid": exp.trace.grid_size}
    if trace.num_prefix and trace.layers[0].attn_after is not None:
        row = _maps(exp, 0, 0)[1][0, trace.num_prefix:]   # the CLS token's row, over block 1's candidates
        cand = numpy(trace.layers[0].candidates).tolist()
        top, mine = int(np.argmax(row)), row[cand.index(f.token)]
        out.update(cls_top=int(cand[top]), cls_top_value=float(row[top]), cls_focus=float(mine),
                   cls_focus_rank=int((row > mine).sum()) + 1)
    return out


def selection_facts(exp: Exploration, f: Focus) -> dict:
    """Steps 2 and 3: the focus token's score, its factors and rank, and who left with it."""
    layer = exp.trace.layers[f.shown_block]
    selection = str(exp.trace.config.get("selection", ""))
    out = {"selection": selection, "family": selection.rsplit("_", 1)[0] if selection != "random" else "random",
           "reduce": selection.rsplit("_", 1)[-1], "candidates": len(numpy(layer.candidates))}
    score = numpy(layer.score)
    if score is not None:
        cand = numpy(layer.candidates).tolist()
        out.update(score=float(score[f.index]), rank=int(ranks(score)[f.index]))
        for name in ("regeneration", "broadcasting"):
            values = numpy(getattr(layer, name))
            if values is not None:
                out[name] = float(values[f.index])
        left = [p for p in numpy(layer.propagated).tolist()]
        out["left"] = sorted(((p, float(score[cand.index(p)])) for p in left), key=lambda t: t[1])
    if layer.attn_after is not None:
        after = _maps(exp, f.shown_block, f.head)[1]
        k = exp.trace.num_prefix + f.index
        out.update(head=f.head, diagonal=float(after[k, k]), column=float(after[:, k].sum()))
    out["per_block"] = [len(numpy(layer.propagated)) for layer in exp.trace.layers]
    return out


def graph_facts(exp: Exploration, f: Focus) -> dict:
    """Step 4: the focus token's neighbours in the run's graph, with their cosine similarity."""
    kind = GRAPH_KIND.get(str(exp.trace.config.get("graph")), "spatial + semantic")
    near = graphs.neighbours_of(exp, kind, f.token)
    sim = numpy(exp.trace.similarity)
    semantic = [(j, float(sim[f.token, j])) for j in near["semantic"]] if sim is not None else []
    return {"kind": kind, "spatial": sorted(near["spatial"]), "semantic": sorted(semantic, key=lambda t: -t[1]),
            "M": int(exp.trace.config.get("num_neighbours", 0))}


def propagation_facts(exp: Exploration, f: Focus) -> dict:
    """Step 5: where the focus token's features went in the block it left, with the weights α·W."""
    out = {"propagation": str(exp.trace.config.get("propagation")), "alpha": float(exp.trace.config.get("alpha", 0))}
    if f.block is None:
        return out
    layer = exp.trace.layers[f.block]
    src, dst, w = edges_of(layer)
    sent = sorted(((int(d), float(x)) for s, d, x in zip(src, dst, w) if s == f.token), key=lambda t: -t[1])
    sizes = dict(zip(numpy(layer.kept).tolist(), numpy(layer.sizes).tolist()))
    out.update(sent=sent, total=float(sum(x for _, x in sent)),
               size_after={d: float(sizes[d]) for d, _ in sent[:1] if d in sizes})
    return out


def sparsity_facts(exp: Exploration, f: Focus) -> dict:
    """Step 6: what theta zeroed in the shown block and head, and in the focus token's row."""
    b, layer = f.shown_block, exp.trace.layers[f.shown_block]
    theta, n = float(exp.trace.config.get("sparsity", 1)), layer.tokens_in
    out = {"theta": theta, "n": n, "k": num_zeroed(n, theta), "block": b, "head": f.head,
           "zeroed": float(layer.zeroed_fraction[0, f.head]), "mass": float(layer.mass_removed[0, f.head]),
           "zeroed_all": float(layer.zeroed_fraction[0].mean())}
    if layer.attn_after is not None:
        before, after = _maps(exp, b, f.head)
        k = exp.trace.num_prefix + f.index
        out["row_zeroed"] = int(((after[k] == 0) & (before[k] != 0)).sum())
    return out


# ----------------------------------------------------------------------------- the steps' text


def _g(x: float) -> str:
    return f"{x:.4g}"


def _ids(pairs: list, fmt: Callable[[float], str] = _g) -> str:
    """'12 (0.0031), 40 (0.0029), … and 3 more'."""
    shown = ", ".join(f"{p} ({fmt(x)})" for p, x in pairs[:LISTED])
    return shown + (f", … and {len(pairs) - LISTED} more" if len(pairs) > LISTED else "")


def _prefix(n: int) -> str:
    return {0: "no prefix token", 1: "the CLS token", 2: "the CLS and distillation tokens"}.get(n, f"{n} prefix tokens")


def _tokens_text(exp: Exploration, f: Focus) -> tuple[list[str], str]:
    a = attention_facts(exp, f)
    (gh, gw), n = a["grid"], a["tokens"]
    text = [f"The model cut the photo into {gh} × {gw} = {gh * gw} patches, each one a token; with {_prefix(a['prefix'])}, "
            f"{n} tokens enter block 1. In each of its {a['heads']} heads every token (a query, a row of the map) "
            f"spreads one unit of attention over all {n} tokens (keys), and takes in their features in those shares."]
    if "cls_top" in a:
        gets = (f"{_g(a['cls_focus'])} (rank {a['cls_focus_rank']} of {gh * gw})" if a["cls_focus"] > 0 else
                "0: sparsification (step 6) zeroed that entry")
        text.append(f"Here, head 0 of block 1: the CLS token attends most to patch {a['cls_top']} "
                    f"({_g(a['cls_top_value'])}); patch {f.token}, which this lesson follows, gets {gets}.")
    return text, r"A_h = \mathrm{softmax}\!\left(\frac{Q_h K_h^\top}{\sqrt{d}} + \log s\right)"


def _factors_text(exp: Exploration, f: Focus) -> tuple[list[str], str]:
    s = selection_facts(exp, f)
    latex, words = SCORES.get(s["family"], (r"\mathrm{score}_j", s["selection"]))
    red = r"\max_h" if s["reduce"] == "max" else r"\operatorname{mean}_h"
    formula = rf"R_j = {red} A_h[j,j] \qquad B_j = {red} \sum_i A_h[i,j] \qquad \mathrm{{score}}_j = {latex}"
    if f.block is None:
        return [f"P = 0 in every block here: no block scores its tokens, so nothing leaves. With P > 0, each "
                f"block scores every patch token j from its sparsified maps ({words})."], formula
    b = f.block + 1
    text = [f"Before any token leaves block {b}, every patch token j gets two numbers from the block's sparsified "
            "maps: its **regeneration difficulty** R, the attention it pays itself (the diagonal; a token that "
            "mostly reads itself is hard to rebuild from the others), and its **broadcasting ability** B, the "
            "attention every token pays it (its column; a token the others read a lot matters to them)."]
    if "regeneration" in s and "broadcasting" in s:
        text.append(f"Patch {f.token}: R = {_g(s['regeneration'])}, B = {_g(s['broadcasting'])} ({s['reduce']} over "
                    f"the heads), so its score ({words}) is {_g(s['score'])}.")
    else:
        text.append(f"This run scores with `{s['selection']}`: {words}; patch {f.token} scores {_g(s['score'])}. "
                    "(The published `mixed_attn_max` multiplies R and B.)")
    if "head" in s:   # the map's values are bfloat16: 3 digits
        own = "" if s["reduce"] == "max" else f" (A[j, j] = {s['diagonal']:.3g})"
        text.append(f"The map is head {s['head']} of block {b}, where patch {f.token}'s own entry is largest{own}; "
                    f"its column sums to {s['column']:.3g} there.")
    return text, formula


def _selection_text(exp: Exploration, f: Focus) -> tuple[list[str], str]:
    s = selection_facts(exp, f)
    formula = r"R = \{\, j : \mathrm{rank}(\mathrm{score}_j) \le P \,\} \quad \text{(lowest first, ties to the lower position)}"
    per_block, trace = s["per_block"], exp.trace
    summary = (f"In all, {sum(per_block)} tokens leave ({', '.join(map(str, per_block))} per block): "
               f"{trace.layers[0].tokens_in} tokens enter block 1, {trace.layers[-1].tokens_out} leave block "
               f"{exp.depth}.")
    if f.block is None:
        return ["No block propagated a token (P = 0 or fewer patch tokens than P).", summary], formula
    before = " (the blocks before it removed none)" if f.block else ""
    text = [f"Block {f.block + 1}{before} ranks its {s['candidates']} patch tokens by score and the "
            f"P = {len(s.get('left', []))} lowest leave: patches {_ids(s.get('left', []))}. Patch {f.token} ranks "
            f"{s.get('rank', 1)}: the first to go.", summary]
    return text, formula


def _graph_text(exp: Exploration, f: Focus) -> tuple[list[str], str]:
    g = graph_facts(exp, f)
    text = ["Before block 1, GTP links the patches into a graph, along which a leaving token will pass on "
            "its features."]
    if g["spatial"]:
        text.append(f"Spatially, patch {f.token} is linked to its {len(g['spatial'])} grid neighbours "
                    f"({', '.join(map(str, g['spatial']))}).")
    if g["semantic"]:
        text.append(f"Semantically, to its M = {g['M']} most similar patches by cosine similarity: "
                    f"{_ids(g['semantic'], lambda x: f'{x:.3f}')}.")
    text.append({"spatial + semantic": "The graph used (mixed, published) has an edge wherever either has one;",
                 "spatial": "This run uses the spatial graph alone;",
                 "semantic": "This run uses the semantic graph alone;"}[g["kind"]]
                + " it is normalised once and only restricted as tokens leave, never renormalised.")
    return text, r"W = D^{-1/2} A \, D^{-1/2}, \qquad D = \mathrm{diag}\big(\textstyle\sum_j A_{ij}\big)"


def _propagation_text(exp: Exploration, f: Focus) -> tuple[list[str], str]:
    p = propagation_facts(exp, f)
    formula = r"x_K \leftarrow x_K + \alpha \, W_{K,R} \, x_R \qquad s_K \leftarrow s_K + \alpha \, W_{K,R} \, s_R"
    if f.block is None:
        return ["No token left in this run, so nothing was propagated."], formula
    b = f.block + 1
    if p["propagation"] == "none":
        return [f"This run prunes (`propagation = none`): patch {f.token} left block {b} and its features were "
                "dropped; nothing is added to anyone. The published setting propagates them along the graph."], formula
    if p["propagation"] == "mean":
        return [f"This run uses `propagation = mean`: the tokens leaving block {b}, patch {f.token} among them, "
                "became one new token, their average, whose size is the sum of theirs. The published setting "
                "propagates them along the graph instead."], formula
    if not p["sent"]:
        return [f"Patch {f.token} left block {b}, but none of its graph neighbours was still there: its features "
                "went nowhere."], formula
    top, w = p["sent"][0]
    text = [f"Patch {f.token} leaves block {b} and its features go, weighted by α·W (α = {_g(p['alpha'])}), to the "
            f"{len(p['sent'])} remaining tokens that have it as a neighbour (W[k, j] ≠ 0 where token k links to j): "
            f"{_ids(p['sent'])}; {_g(p['total'])} of x in all.",
            f"So $x_{{{top}}} \\leftarrow x_{{{top}}} + {_g(w)} \\, x_{{{f.token}}}$, and sizes follow"
            + (f": patch {top} now counts for {_g(p['size_after'][top])} patches (with what the others sent it)."
               if top in p["size_after"] else ".")
            + " The MLP and every later block then run on fewer tokens."]
    return text, formula


def _sparsity_text(exp: Exploration, f: Focus) -> tuple[list[str], str]:
    s = sparsity_facts(exp, f)
    b, h, n = s["block"] + 1, s["head"], s["n"]
    formula = (r"A_h[i,j] \leftarrow 0 \ \text{for the } \lfloor n^2 (1-\theta) \rfloor \text{ smallest entries of each } A_h"
               r" \ \text{(no renormalisation)}")
    if s["theta"] >= 1:
        return [f"θ = 1 here: sparsification is off and no attention entry was zeroed (block {b}, head {h}: "
                f"{100 * s['zeroed']:.1f}%)."], formula
    text = [f"θ = {_g(s['theta'])} keeps that share of each head's n² attention entries: in block {b}, head {h}, "
            f"the ⌊{n}² · {_g(1 - s['theta'])}⌋ = {s['k']:,} smallest of {n * n:,} were set to zero, "
            f"{100 * s['zeroed']:.1f}% of the map (ties included), which held {100 * s['mass']:.2f}% of its "
            f"attention mass (all heads: {100 * s['zeroed_all']:.1f}% zeroed)."]
    if "row_zeroed" in s:
        text.append(f"In patch {f.token}'s row (its attention as a query), {s['row_zeroed']} of {n} entries were "
                    "zeroed. This happens in every block's attention, before selection reads the maps (step 2).")
    return text, formula


def _prediction_text(exp: Exploration, costs: Costs) -> tuple[list[str], str]:
    run = exp.run
    full, reduced = costs.of("full"), costs.of("gtp")
    cost = ("GMACs are being counted…" if full is None or reduced is None else
            f"GTP costs {reduced:.3f} GMACs instead of {full:.3f} (−{100 * (1 - reduced / full):.1f}%), counted now.")
    full_ms, gtp_ms = run.latency_ms
    timing = f"One forward took {full_ms:.1f} ms (full) and {gtp_ms:.1f} ms (GTP) on {run.device}."
    chart = "The chart puts this setting beside the paper's published curves (labelled published, with their source)."
    if not exp.has_head:
        return [f"This checkpoint has no classifier, so there is no prediction to compare: instead, the cosine "
                f"similarity of the final features of the full model and of GTP is {run.feature_cosine:.4f} "
                f"(1 = identical). {cost}", f"{timing} {chart}"], (
            r"\cos(f, \hat f) = \frac{f \cdot \hat f}{\lVert f \rVert \, \lVert \hat f \rVert}")
    a, b = run.full_top5[0], run.gtp_top5[0]
    verdict = "the same top-1" if a.index == b.index else "a different top-1"
    text = [f"The full model says *{a.label.split(',')[0]}* ({100 * a.probability:.1f}%), GTP says "
            f"*{b.label.split(',')[0]}* ({100 * b.probability:.1f}%): {verdict}. {cost}", f"{timing} {chart}"]
    return text, r"\text{GMACs saved} = 1 - \mathrm{GMACs}_{\mathrm{GTP}} / \mathrm{GMACs}_{\mathrm{full}}"


# ----------------------------------------------------------------------------- a step as shown

SPEC_SECTIONS = (2, 3, 3, 1, 4, 2, 6)
RANDOM_NOTE = ("*Random weights here: every number is a real computation of this network, but what it looks at "
               "and predicts means nothing.*")


def step_figure(exp: Exploration, step: int, f: Focus, tradeoff: Callable[[], PlotData]) -> PlotData:
    """The figure of step `step` (1-based): a tab's own view of this run, the focus token highlighted."""
    b, t = f.shown_block, f.token
    if step == 1:
        return (attention.cls_attention(exp, 0, 0, highlight=t) if exp.trace.num_prefix
                else attention.attention(exp, 0, 0, highlight=t, along="row"))
    if step == 2:
        return attention.attention(exp, b, f.head, highlight=t, along="column")
    if step == 5 and f.block is not None and propagation_facts(exp, f).get("sent"):
        return walk.sent(exp, f.block, t)   # the followed patch's own edges, not every token's
    if step in (3, 5):
        return walk.walk(exp, b, highlight=t)
    if step == 4:
        return graphs.graph(exp, graph_facts(exp, f)["kind"], highlight=t)
    if step == 6:
        return attention.attention(exp, b, f.head, highlight=t, along="row")
    return tradeoff()


def step_markdown(exp: Exploration, step: int, f: Focus, costs: Costs) -> str:
    """Step `step`'s text: title, sentences quoting this run, the formula, what is highlighted."""
    texts = {1: _tokens_text, 2: _factors_text, 3: _selection_text, 4: _graph_text, 5: _propagation_text,
             6: _sparsity_text}
    text, formula = texts[step](exp, f) if step in texts else _prediction_text(exp, costs)
    lines = [f"### {step}. {TITLES[step - 1]}"]
    if not exp.pretrained:
        lines.append(RANDOM_NOTE)
    lines += [" ".join(text), f"$${formula}$$"]
    tail = f"SPEC.md section {SPEC_SECTIONS[step - 1]}."
    if step < NUM_STEPS:
        lines.append(f"*Highlighted in green: {patch_name(f.token, exp.trace.grid_size)}.* {tail}")
    else:
        lines.append(tail)
    return "\n\n".join(lines)


def without_run(step: int) -> str:
    return f"### {step}. {TITLES[step - 1]}\n\nRun a photo: every step quotes the numbers of its run."
