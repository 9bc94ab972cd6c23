"""A classroom opening the same example at once, measured (a report, not a test).

N clients (default 30, each its own session, as many browsers) open the same link together
(`LINK`: the first example photo): each sends the page-load event with the link's query (which
hands it the example photo and settings), then the run event of that
photo with the page's default settings and the refresh the page sends after it, over Gradio's
queue protocol (one light asyncio client: the clients take little of the CPU the app uses).
Reported: whether every client was served (its status names the photo), how many times the
models ran for it (the app is started here, in a second process that counts its GPU-function
calls: one is the goal), the time from the start to each client's first panels (p50, p95, max;
goal p95 <= 3 s), the CPU seconds the app used, and the machine's load average.

    python scripts/classroom_load.py [--clients 30] [--start app|zerogpu|cold]

--start app (default) starts as `python app.py` does on a CPU: the shared runs and their GMACs are
made at start-up. zerogpu: as on ZeroGPU, the GMACs at start-up and the run by the first request
of the burst while the others wait for it. cold: nothing made before the burst.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

P95_GOAL_S = 3.0
LINK = "?example=1&tab=prediction"   # what the teacher sent: the query of the page's address


def serve(port: int, count_file: Path, start: str) -> None:
    """The app as `python app.py` starts it (`start`: see --start), its GPU-function calls counted
    into `count_file`."""
    from app.core import inference, limits
    from app.core.models import preload
    from app.ui.layout import CSS, create_app
    from gtp import kernels

    real, calls = inference.run_photo.on_gpu, []

    def counted(job):
        calls.append(job.settings)
        count_file.write_text(str(len(calls)))
        return real(job)
    inference.run_photo.on_gpu = counted
    count_file.write_text("0")
    kernels.warm_up()
    preload()   # the default model, loaded (the teacher opened the page before the class did)
    if start != "cold":
        inference.warm_up(examples=start == "app")
    demo = create_app()
    demo.launch(server_name="127.0.0.1", server_port=port, quiet=True, css=CSS, prevent_thread_lock=True,
                **limits.launch_options())
    print("ready", flush=True)
    threading.Event().wait()


async def event(http, base: str, session: str, dep: dict, data: list, query: str = "") -> AsyncIterator[dict]:
    """One event as the page sends it (Gradio's queue protocol: join, then the session's
    server-sent messages; `query`: the page's, which the page sends with its events); yields this
    event's messages up to its completion."""
    joined = await http.post(f"{base}gradio_api/queue/join{query}", json={
        "data": data, "event_data": None, "fn_index": dep["id"], "trigger_id": None, "session_hash": session})
    joined.raise_for_status()
    event_id = joined.json()["event_id"]
    async with http.stream("GET", f"{base}gradio_api/queue/data", params={"session_hash": session}) as stream:
        buffer = ""
        async for chunk in stream.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                line, buffer = buffer.split("\n\n", 1)
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("event_id") == event_id:
                    yield message
                    if message["msg"] == "process_completed":
                        return


def texts(value) -> list[str]:
    """Every string inside an event's output (updates and diffs included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in texts(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in texts(v)]
    return []


def component_id(config: dict, elem_id: str) -> int:
    """The id of the page's component with this element id."""
    return next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)


async def open_example(http, base: str, config: dict, start: float) -> dict:
    """One student opens the page: its load event hands it the first example, its run event the
    panels. Seconds from `start` to the first panels and to the end, and the status line."""
    deps = {d.get("api_name"): d for d in config["dependencies"]}
    components = {c["id"]: c for c in config["components"]}
    session = uuid.uuid4().hex[:11]
    photo = None
    load = deps["open_link"]   # the page load reads the link's query
    async for message in event(http, base, session, load, [None] * len(load["inputs"]), LINK):
        if message["msg"] == "process_completed":
            if not message.get("success"):
                raise RuntimeError(f"page load failed: {message.get('output')}")
            photo = message["output"]["data"][load["outputs"].index(component_id(config, "gtp-photo"))]
    run = deps["run_event"]
    data = [None if components[j]["type"] == "state" else photo if components[j]["type"] == "image"
            else components[j].get("props", {}).get("value") for j in run["inputs"]]
    first, status = None, ""
    async for message in event(http, base, session, run, data):
        if message["msg"] in ("process_generating", "process_completed"):
            if not message.get("success", True):
                raise RuntimeError(" ".join(texts(message.get("output")))[:200])
            first = first or time.perf_counter() - start
            status = next((t for t in texts(message.get("output")) if t.startswith("Ran ")), status)
    refresh = deps["refresh_event"]   # the page's `.then` after a run (it queues for the models too)
    async for _ in event(http, base, session, refresh, [None if components[j]["type"] == "state" else
                                                         components[j].get("props", {}).get("value")
                                                         for j in refresh["inputs"]]):
        pass
    return {"panels_s": first, "done_s": time.perf_counter() - start, "status": status}


def burst(url: str, clients: int) -> list[dict]:
    """`clients` sessions open the page at the same moment, each as a browser would."""
    import httpx

    async def main() -> list[dict]:
        limits = httpx.Limits(max_connections=4 * clients, max_keepalive_connections=4 * clients)
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as http:
            config = (await http.get(f"{url}config")).json()   # the page, loaded before the class starts

            async def one() -> dict:
                try:
                    return await open_example(http, url, config, start)
                except Exception as e:  # reported, not raised: every client is counted
                    return {"error": f"{type(e).__name__}: {e}"[:200]}
            start = time.perf_counter()
            return list(await asyncio.gather(*(one() for _ in range(clients))))
    return asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--start", choices=("app", "zerogpu", "cold"), default="app",
                        help="app: as `python app.py` starts on a CPU (shared runs and GMACs made at start-up); "
                             "zerogpu: as on ZeroGPU (GMACs at start-up, the runs by the first request); "
                             "cold: nothing made before the burst")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.count_file, args.start)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    count_file = ROOT / "artifacts" / f"classroom_runs_{port}.txt"
    count_file.parent.mkdir(exist_ok=True)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--count-file", str(count_file),
                               "--start", args.start], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready", "the app did not start"
        before, cpu = int(count_file.read_text()), cpu_seconds(server.pid)
        load = os.getloadavg()
        results = burst(f"http://127.0.0.1:{port}/", args.clients)
        runs, cpu = int(count_file.read_text()) - before, cpu_seconds(server.pid) - cpu
    finally:
        server.terminate()
        server.wait(timeout=60)
        count_file.unlink(missing_ok=True)
    served = [r for r in results if "error" not in r and "451 × 300" in r["status"]]
    panels = [r["panels_s"] for r in served]
    report = {"clients": args.clients, "served": len(served), "model_runs_during_burst": runs,
              "start": args.start, "server_cpu_s": round(cpu, 2), "load_average_before": [round(v, 2) for v in load],
              "load_average_after": [round(v, 2) for v in os.getloadavg()],
              "panels_s": {"p50": round(percentile(panels, 0.5), 3), "p95": round(percentile(panels, 0.95), 3),
                           "max": round(max(panels), 3)} if panels else None,
              "errors": sorted({r["error"] for r in results if "error" in r})}
    print(json.dumps(report, indent=1, ensure_ascii=False))
    verdict = "within" if panels and report["panels_s"]["p95"] <= P95_GOAL_S else "OVER"
    print(f"{len(served)}/{args.clients} served; the models ran {runs} time(s) for them; p95 to panels "
          f"{report['panels_s'] and report['panels_s']['p95']} s ({verdict} the {P95_GOAL_S:.0f} s goal)")


if __name__ == "__main__":
    main()
