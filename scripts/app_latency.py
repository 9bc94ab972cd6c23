"""How fast the app answers, measured on this machine (a report, not a test).

Budgets (deit_small_patch16_224 on the project's 2-core CPUs):
  * a new photo or new hyper-parameters -> every panel drawn: at most 1.5 s (the GMACs of a
    setting never seen before follow: counting them with gtp.gmacs takes seconds on a CPU);
  * moving the layer slider or switching a view (redraw from the cached trace): at most 200 ms.

Times the app's own event handlers in process (models, figures and the JPEG files Gradio
serves), then the `explore` API end to end through a launched server. Other processes on
the machine slow every number down: the load average is printed with them.

    python scripts/app_latency.py [--model deit_small_patch16_224] [--repeats 3] [--no-http]
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

from app import figures as F  # noqa: E402
from app import layout as L  # noqa: E402
from app.examples import example_paths  # noqa: E402
from app.inference import RESULTS, device_name  # noqa: E402

RUN_BUDGET_MS = 1500
VIEW_BUDGET_MS = 200


def ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def summary(name: str, times: list[float], budget: float) -> None:
    verdict = "within" if max(times) <= budget else "OVER"
    print(f"  {name:<44} median {statistics.median(times):7.1f} ms   max {max(times):7.1f} ms   "
          f"({len(times)} runs; {verdict} the {budget:.0f} ms budget)")


def run_args(photo: str, model: str, num_prop: int = 8, graph_kind: str = "spatial + semantic") -> list:
    return [photo, model, None, num_prop, "", 0.6, 0.1, 8, "mixed", "mixed_attn_max", "graph", True,
            1, graph_kind, 98, 1, 0, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the example photos")
    parser.add_argument("--no-http", action="store_true", help="skip the end-to-end API timing")
    args = parser.parse_args()
    photos = example_paths()
    print(f"GTP Explorer latency, {args.model} on {device_name()}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    cold = ms(lambda: L.run(*run_args(photos[0], args.model)))
    print(f"  first run (loads the model, counts GMACs):  {cold:7.0f} ms (once per process)")

    # A new photo: the models run once, then every panel is drawn (GMACs of this setting cached).
    new_photo = []
    for _ in range(args.repeats):
        for photo in photos:
            RESULTS.clear()
            new_photo.append(ms(lambda: L.run(*run_args(photo, args.model))))
    summary("new photo -> all panels", new_photo, RUN_BUDGET_MS)

    # New hyper-parameters: every panel first; the GMACs of a setting never seen before are
    # counted next (gtp.gmacs, once per setting) and fill the prediction panel when ready.
    new_params, counting = [], []
    for i in range(args.repeats * 2):
        RESULTS.clear()
        outputs = []
        new_params.append(ms(lambda: outputs.append(L.run(*run_args(photos[0], args.model, num_prop=9 + i)))))
        counting.append(ms(lambda: L.fill_gmacs(outputs[0][0], None)))
    summary("new hyper-parameters -> all panels", new_params, RUN_BUDGET_MS)
    print(f"  then GMACs of the new setting counted in     median {statistics.median(counting):7.1f} ms "
          f"(gtp.gmacs; shown as 'counting…' until then)")

    # View events: everything redrawn from the cached trace (figure caches emptied first).
    exp = L.run(*run_args(photos[1], args.model))[0]
    slider, graphs, attention = [], [], []
    for _ in range(args.repeats):
        exp.figures.clear()
        slider += [ms(lambda: L.draw_layer(exp, b)) for b in range(1, exp.depth + 1)]
        graphs += [ms(lambda: L.draw_graph(exp, kind, 40 + 7 * i)) for i, kind in enumerate(F.GRAPH_KINDS)]
        attention += [ms(lambda: L.draw_attention(exp, b, b % exp.num_heads)) for b in range(1, exp.depth + 1)]
    summary("layer slider (3 panels redrawn)", slider, VIEW_BUDGET_MS)
    summary("graph view / picked token (2 panels)", graphs, VIEW_BUDGET_MS)
    summary("attention block / head (3 panels)", attention, VIEW_BUDGET_MS)
    cached = [ms(lambda: L.draw_layer(exp, b)) for b in range(1, exp.depth + 1)]
    summary("layer slider, block seen before", cached, VIEW_BUDGET_MS)

    if not args.no_http:
        from gradio_client import Client, handle_file
        demo = L.create_app()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            api = []
            for photo in photos * args.repeats:
                RESULTS.clear()
                api.append(ms(lambda: client.predict(handle_file(photo), model=args.model, api_name="/explore")))
            summary("explore API end to end (HTTP, no figures)", api, RUN_BUDGET_MS)
        finally:
            demo.close()


if __name__ == "__main__":
    main()
