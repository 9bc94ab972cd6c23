"""How fast the app answers and how much figure data it sends, measured on this machine (a
report, not a test).

Budgets (deit_small_patch16_224 on the project's 2-core CPUs, issue 17):
  * a new photo -> the visible tab's panels (Prediction: the full model and GTP): at most 600 ms;
    -> every panel of every tab, each tab opened in turn (the Compare tab runs ToMe and pruning
    then): at most 1200 ms. The GMACs of a setting never seen before follow (counting them with
    gtp.gmacs takes a fraction of a second on a CPU);
  * new hyper-parameters -> the visible tab's panels: at most 600 ms;
  * switching a view (graph token, attention block / head, the lesson's Back / Next: redrawn from
    the cached run): at most 60 ms; the layer walk's slider and Play run in the browser and cost
    no request;
  * the figure data of one run (the JSON of every plotly figure sent, and the photo file its
    figures show, once): at most 600 kB.

Times the app's own event handlers in process (models and figures, serialised as Gradio sends
them), then the `explore` API end to end through a launched server. Other processes on the
machine slow every number down: the load average is printed with them.

    python scripts/app_latency.py [--model deit_small_patch16_224] [--repeats 1] [--no-http]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.core import inference  # noqa: E402
from app.core.assets import example_paths  # noqa: E402
from app.core.models import DEVICE  # noqa: E402
from app.core.photos import open_photo  # noqa: E402
from app.core.settings import make_settings  # noqa: E402
from app.ui import handlers as H  # noqa: E402
from app.ui import lesson  # noqa: E402
from app.views import base as V  # noqa: E402
from app.views.graphs import GRAPH_KINDS  # noqa: E402
from gtp.measure.metrics import device_name  # noqa: E402

VISIBLE_BUDGET_MS = 600
ALL_BUDGET_MS = 1200
VIEW_BUDGET_MS = 60
PAYLOAD_BUDGET_BYTES = 600_000
PLOTS = ("walk_plot", "graph_plot", "similarity_plot", "attn_plot", "cls_plot", "tradeoff_plot", "compare_plot")


def ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def summary(name: str, times: list[float], budget: float) -> None:
    verdict = "within" if statistics.median(times) <= budget else "OVER"
    print(f"  {name:<46} median {statistics.median(times):7.1f} ms   max {max(times):7.1f} ms   "
          f"({len(times)} runs; median {verdict} the {budget:.0f} ms budget)")


def fresh() -> None:
    """No cached run or figure (GMACs stay cached: they are counted once per setting)."""
    inference.forget_runs()
    V.FIGURES.clear()


def new_photo(photo: str, settings) -> tuple[float, float, float, dict]:
    """(ms to the visible tab's panels, of which the models; ms to every panel of every tab;
    every panel by name) for a photo never seen: the run event's first update on the Prediction
    tab, then each other tab opened in turn."""
    fresh()
    models = ms(lambda: inference.explore_photo(open_photo(photo), settings))
    fresh()
    panels: dict = {}
    start = time.perf_counter()
    panels.update(next(iter(H.run(photo, settings))))
    visible = (time.perf_counter() - start) * 1000
    for tab in H.TAB_PANELS:
        for update in H.open_tab(tab, panels["state"], panels["shown"]):
            panels.update(update)
    return visible, models, (time.perf_counter() - start) * 1000, panels


def payload(panels: dict) -> dict[str, int]:
    """Bytes of each figure's JSON as `gr.Plot` sends it, and of the photo file they show."""
    sizes = {name: len(panels[name].plot) for name in PLOTS if hasattr(panels.get(name), "plot")}
    photo = V.photo_of(panels["state"])
    sizes["photo (once)"] = Path(photo.removeprefix(V.PHOTO_ROUTE)).stat().st_size if photo.startswith(
        V.PHOTO_ROUTE) else 0
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the example photos")
    parser.add_argument("--no-http", action="store_true", help="skip the end-to-end API timing")
    args = parser.parse_args()
    photos = example_paths()
    settings = make_settings(args.model)
    print(f"GTP Explorer latency, {args.model} on {device_name(DEVICE)}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    cold = ms(lambda: new_photo(photos[0], settings))
    print(f"  first run (loads the model, counts GMACs):  {cold:7.0f} ms (once per process)")

    visible, models, every, sizes = [], [], [], []
    for _ in range(args.repeats):
        for photo in photos:
            v, m, a, panels = new_photo(photo, settings)
            visible.append(v)
            models.append(m)
            every.append(a)
            sizes.append(payload(panels))
    summary("new photo -> the visible tab (Prediction)", visible, VISIBLE_BUDGET_MS)
    print(f"    of which the models (GTP traced and timed, the full model once): median {statistics.median(models):7.1f} ms")
    summary("new photo -> every panel of every tab", every, ALL_BUDGET_MS)

    # New hyper-parameters: the visible tab first; their GMACs are counted next (once per setting).
    new_params, counting = [], []
    for i in range(args.repeats):
        fresh()
        events = iter(H.run(photos[0], make_settings(args.model, num_prop=9 + i)))
        new_params.append(ms(lambda: next(events)))
        counting.append(ms(lambda: list(events)))
    summary("new hyper-parameters -> the visible tab", new_params, VISIBLE_BUDGET_MS)
    print(f"  then GMACs of the new setting counted in       median {statistics.median(counting):7.1f} ms "
          f"(gtp.gmacs; shown as 'counting…' until then)")

    print("  figure data of one run (JSON bytes sent to the browser, the photo file once), largest run:")
    largest = max(sizes, key=lambda s: sum(s.values()))
    for name, size in largest.items():
        print(f"    {name:<18} {size / 1e3:8.1f} kB")
    total = sum(largest.values())
    verdict = "within" if total <= PAYLOAD_BUDGET_BYTES else "OVER"
    print(f"    {'total':<18} {total / 1e3:8.1f} kB ({verdict} the {PAYLOAD_BUDGET_BYTES / 1e3:.0f} kB budget; "
          f"median over {len(sizes)} runs {statistics.median(sum(s.values()) for s in sizes) / 1e3:.1f} kB)")

    # View events: redrawn from the cached run (figure cache emptied first).
    exp = new_photo(photos[1], settings)[3]["state"]
    graphs, attention = [], []
    for _ in range(args.repeats):
        V.FIGURES.clear()
        graphs += [ms(lambda: H.draw_graph(exp, kind, 40 + 7 * i)) for i, kind in enumerate(GRAPH_KINDS)]
        attention += [ms(lambda: H.draw_attention(exp, b, b % exp.num_heads)) for b in range(1, exp.depth + 1)]
    summary("graph view / token (2 figures + text)", graphs, VIEW_BUDGET_MS)
    summary("attention block / head (2 figures + text)", attention, VIEW_BUDGET_MS)
    steps, again = [], []
    for _ in range(args.repeats):
        V.FIGURES.clear()   # each step's figure drawn for the first time, then taken from the cache
        steps += [ms(lambda: H.draw_lesson(exp, step)) for step in range(1, lesson.NUM_STEPS + 1)]
        again += [ms(lambda: H.draw_lesson(exp, step)) for step in range(1, lesson.NUM_STEPS + 1)]
    summary("lesson Back / Next, step first seen (figure + text)", steps, VIEW_BUDGET_MS)
    summary("lesson Back / Next, step seen before", again, VIEW_BUDGET_MS)
    print("  layer walk slider / Play: in the browser, no request (tests/test_app_browser.py)")

    if not args.no_http:
        from gradio_client import Client, handle_file

        from app.ui.layout import create_app
        demo = create_app()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            api = []
            for photo in photos * args.repeats:
                inference.forget_runs()
                api.append(ms(lambda: client.predict(handle_file(photo), model=args.model, api_name="/explore")))
            summary("explore API end to end (HTTP, no figures)", api, VISIBLE_BUDGET_MS)
        finally:
            demo.close()


if __name__ == "__main__":
    main()
