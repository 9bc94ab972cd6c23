"""A bystander's page run, alone and during a burst of junk weights files (issue 28): a report,
not a test (the test, tests/test_app_refusals.py, asserts the mechanism instead of a time).

Starts `python app.py` on a free loopback port (as scripts/soak.py does, in a temp folder it
deletes), or attaches to one with --url. The bystander is one session doing what the page does
on a new photo or setting: the weights step without a file (`/check_weights`), then the run
(`/run_event`), on deit_tiny. It is timed --runs times alone; then --junk distinct junk
.safetensors files go to `/check_weights` at once from --sessions other sessions (half of them
small, refused by their header like the red-team's 30 wrong-shape files; half, or every
--big-every-th, just big enough to pass the header checks and be loaded), and the bystander is timed again, one page run after
another, until every junk check has been answered. Prints each wait, the median and maximum of
both phases, their ratio (measured side by side in this one run), and the burst's answers.

    python scripts/weights_burst.py                       # 30 junk files from 5 sessions
    python scripts/weights_burst.py --junk 30 --sessions 1 --runs 10
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from soak import PHOTO, ROOT, start_server, stop_server
from soak_clients import App

sys.path.insert(0, str(ROOT))   # gtp, for deit_tiny's bounds
MODEL = "deit_tiny_patch16_224"
MAX_JUNK = 200


def junk_files(folder: Path, n: int, big_every: int = 2) -> list[Path]:
    """`n` distinct junk .safetensors files: a few bytes of tensors each, but every `big_every`-th
    (0: none) just over what deit_tiny's header check asks for (one uint8 tensor that fits no model)."""
    import torch
    from safetensors.torch import save_file
    import gtp.models as M
    big = M.weights_bounds(MODEL).min_bytes
    files = []
    for i in range(n):
        path = folder / f"junk_{i}.safetensors"
        is_big = big_every and i % big_every == big_every - 1
        save_file({"junk": torch.full(((big if is_big else 64) + i,), i % 256, dtype=torch.uint8)}, str(path))
        files.append(path)
    return files


def page_run(app: App, client, run_args: list) -> tuple[float, float]:
    """Seconds of one page run of the bystander: (the weights step without a file, then the run)."""
    times = []
    for endpoint, args in (("/check_weights", [MODEL, None]), ("/run_event", run_args)):
        t0 = time.perf_counter()
        answer = app.call(client, endpoint, *args)
        if answer != "ok":
            raise SystemExit(f"the bystander's {endpoint} failed: {answer}")
        times.append(time.perf_counter() - t0)
    return times[0], times[1]


def line(name: str, runs: list[tuple[float, float]]) -> str:
    return (f"{name} ({len(runs)}): " + ", ".join(f"{a + b:.2f} ({a:.2f} + {b:.2f})" for a, b in runs)
            + " s  [page run (weights step + run)]")


def send(url: str, folder: Path, junk_n: int, sessions: int, max_seconds: float) -> None:
    """The burst (in its own process): every junk file in `folder` to /check_weights at once from
    `sessions` clients; prints "sending" when the clients are ready, then the answers counted (JSON)."""
    app = App(url, time.monotonic() + max_seconds)
    senders = [app.client() for _ in range(sessions)]
    files = [folder / f"junk_{i}.safetensors" for i in range(junk_n)]
    print("sending", flush=True)
    with ThreadPoolExecutor(max_workers=junk_n) as pool:
        futures = [pool.submit(app.call, senders[i % sessions], "/check_weights", MODEL, app.handle_file(str(f)))
                   for i, f in enumerate(files)]
        answers = collections.Counter(re.sub(r"\d[\d,]*", "#", f.result())[:120] for f in futures)  # alike, whatever the file
    print(json.dumps(answers), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--junk", type=int, default=30, help=f"junk files sent at once (default 30, at most {MAX_JUNK})")
    parser.add_argument("--sessions", type=int, default=5, help="sessions sending them (default 5)")
    parser.add_argument("--big-every", type=int, default=2,
                        help="every n-th junk file passes the header checks and is loaded (default 2; 0: none)")
    parser.add_argument("--runs", type=int, default=5, help="the bystander's page runs alone (default 5)")
    parser.add_argument("--max-seconds", type=float, default=600, help="hard stop (default 600)")
    parser.add_argument("--url", help="attach to a running app instead (loopback only)")
    parser.add_argument("--send", help=argparse.SUPPRESS)      # the burst's own process: the app's URL
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        return send(args.send, args.folder, args.junk, args.sessions, args.max_seconds)
    junk_n, sessions = min(max(args.junk, 1), MAX_JUNK), max(args.sessions, 1)
    with tempfile.TemporaryDirectory(prefix="gtp-burst-") as work:
        work = Path(work)
        proc, url = (None, args.url) if args.url else start_server(work, work / "app.log")
        stop_timer = threading.Timer(args.max_seconds, lambda: stop_server(proc))
        stop_timer.daemon = True
        stop_timer.start()
        try:
            app = App(url, time.monotonic() + args.max_seconds)
            bystander = app.client()
            photo = app.handle_file(str(PHOTO))
            run_args = [MODEL if v == "deit_small_patch16_224" else v
                        for v in app.args("/run_event", image=photo, file=None)]
            page_run(app, bystander, run_args)   # warm: deit_tiny loaded, this photo's run cached
            alone = [page_run(app, bystander, run_args) for _ in range(max(args.runs, 1))]
            junk_files(work, junk_n, max(args.big_every, 0))
            # The burst is sent by a process of its own, so that its 30 clients' threads do not
            # share this process (and its interpreter lock) with the bystander's client.
            sender = subprocess.Popen([sys.executable, __file__, "--send", url, "--folder", str(work),
                                       "--junk", str(junk_n), "--sessions", str(sessions),
                                       "--max-seconds", str(args.max_seconds)], stdout=subprocess.PIPE, text=True)
            assert sender.stdout is not None
            if sender.stdout.readline().strip() != "sending":
                raise SystemExit("the burst's sender did not start")
            t0 = time.perf_counter()
            during = []
            while sender.poll() is None or not during:
                during.append(page_run(app, bystander, run_args))
            burst_s = time.perf_counter() - t0
            answers = collections.Counter(json.loads(sender.stdout.read() or "{}"))
        finally:
            stop_timer.cancel()
            stop_server(proc)
    print(line("bystander alone", alone))
    print(line("during the burst", during))
    for name, part in (("page run", lambda r: r[0] + r[1]), ("weights step", lambda r: r[0]), ("run", lambda r: r[1])):
        a, d = [part(r) for r in alone], [part(r) for r in during]
        print(f"{name:>12}: median alone {statistics.median(a):.3f} s, during {statistics.median(d):.3f} s "
              f"(x{statistics.median(d) / statistics.median(a):.2f}); max during {max(d):.3f} s "
              f"(+{max(d) - statistics.median(a):.2f} s over the median alone)")
    print(f"the burst: {junk_n} junk files from {sessions} session(s), all answered in {burst_s:.1f} s:")
    for answer, count in answers.most_common():
        print(f"  {count:3d} x {answer}")


if __name__ == "__main__":
    main()
