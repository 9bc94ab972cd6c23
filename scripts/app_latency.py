"""How fast the app answers and how much figure data it sends, measured on this machine (a
report, not a test).

Budgets (deit_small_patch16_224 on the project's 2-core CPUs):
  * a new photo or new hyper-parameters -> every panel drawn: at most 1.5 s (the GMACs of a
    setting never seen before follow: counting them with gtp.gmacs takes seconds on a CPU);
  * switching a view (graph kind, attention block / head: redrawn from the cached run): at
    most 200 ms; the layer walk's slider and Play run in the browser and cost no request;
  * the figure data of one run (the JSON of every plotly figure sent): at most ~1.5 MB.

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
from app.ui import handlers as H  # noqa: E402
from app.views import base as V  # noqa: E402
from app.views.graphs import GRAPH_KINDS  # noqa: E402
from gtp.measure.metrics import device_name  # noqa: E402
from app.core.models import DEVICE  # noqa: E402
from app.core.photos import open_photo  # noqa: E402
from app.core.settings import make_settings  # noqa: E402

RUN_BUDGET_MS = 1500
VIEW_BUDGET_MS = 200
PAYLOAD_BUDGET_BYTES = 1_500_000
PLOTS = ("walk_plot", "graph_plot", "similarity_plot", "attn_plot", "cls_plot", "tradeoff_plot", "compare_plot")


def ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def summary(name: str, times: list[float], budget: float) -> None:
    verdict = "within" if max(times) <= budget else "OVER"
    print(f"  {name:<44} median {statistics.median(times):7.1f} ms   max {max(times):7.1f} ms   "
          f"({len(times)} runs; {verdict} the {budget:.0f} ms budget)")


def first_update(photo: str, settings) -> dict:
    """The run event's first update (every panel), by output name."""
    return dict(zip(H.RUN_OUTPUT_NAMES, next(iter(H.run(photo, settings=settings)))))


def fresh(photo: str, settings) -> tuple[float, float, dict]:
    """(ms for the models, ms for the whole event, its first update) with no cached run or
    figure: the run is made first (timed), then the event draws every panel from it."""
    inference.RUNS.clear()
    V.FIGURES.clear()
    model_ms = ms(lambda: inference.explore_photo(open_photo(photo), settings))
    out: list[dict] = []
    rest = ms(lambda: out.append(first_update(photo, settings)))
    return model_ms, model_ms + rest, out[0]


def payload(update: dict) -> dict[str, int]:
    """Bytes of each figure's JSON as `gr.Plot` sends it."""
    return {name: len(update[name].plot) for name in PLOTS if hasattr(update.get(name), "plot")}


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
    cold = ms(lambda: list(H.run(photos[0], settings=settings)))
    print(f"  first run (loads the model, counts GMACs):  {cold:7.0f} ms (once per process)")

    # A new photo: the models run once, then every panel is drawn (GMACs of this setting cached).
    runs, models, sizes = [], [], []
    for _ in range(args.repeats):
        for photo in photos:
            model_ms, total, update = fresh(photo, settings)
            runs.append(total)
            models.append(model_ms)
            sizes.append(payload(update))
    summary("new photo -> all panels", runs, RUN_BUDGET_MS)
    print(f"    of which the models (full, GTP traced, ToMe, pruning): median {statistics.median(models):7.1f} ms; "
          f"figures: median {statistics.median(r - m for r, m in zip(runs, models)):7.1f} ms")

    # New hyper-parameters: every panel first; their GMACs are counted next (once per setting).
    new_params, counting = [], []
    for i in range(args.repeats):
        other = make_settings(args.model, num_prop=9 + i)
        inference.RUNS.clear()
        V.FIGURES.clear()
        events = iter(H.run(photos[0], settings=other))
        new_params.append(ms(lambda: next(events)))
        counting.append(ms(lambda: list(events)))
    summary("new hyper-parameters -> all panels", new_params, RUN_BUDGET_MS)
    print(f"  then GMACs of the new setting counted in     median {statistics.median(counting):7.1f} ms "
          f"(gtp.gmacs; shown as 'counting…' until then)")

    print("  figure data of one run (JSON bytes sent to the browser), largest run:")
    largest = max(sizes, key=lambda s: sum(s.values()))
    for name, size in largest.items():
        print(f"    {name:<18} {size / 1e3:8.1f} kB")
    total = sum(largest.values())
    verdict = "within" if total <= PAYLOAD_BUDGET_BYTES else "OVER"
    print(f"    {'total':<18} {total / 1e3:8.1f} kB ({verdict} the {PAYLOAD_BUDGET_BYTES / 1e6:.1f} MB budget; "
          f"median over {len(sizes)} runs {statistics.median(sum(s.values()) for s in sizes) / 1e3:.1f} kB)")

    # View events: redrawn from the cached run (figure cache emptied first).
    exp = first_update(photos[1], settings)["state"]
    graphs, attention = [], []
    for _ in range(args.repeats):
        V.FIGURES.clear()
        graphs += [ms(lambda: H.draw_graph(exp, kind, 40 + 7 * i)) for i, kind in enumerate(GRAPH_KINDS)]
        attention += [ms(lambda: H.draw_attention(exp, b, b % exp.num_heads)) for b in range(1, exp.depth + 1)]
    summary("graph view / token (2 figures)", graphs, VIEW_BUDGET_MS)
    summary("attention block / head (2 figures + text)", attention, VIEW_BUDGET_MS)
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
                inference.RUNS.clear()
                api.append(ms(lambda: client.predict(handle_file(photo), model=args.model, api_name="/explore")))
            summary("explore API end to end (HTTP, no figures)", api, RUN_BUDGET_MS)
        finally:
            demo.close()


if __name__ == "__main__":
    main()
