"""Soak test: the resource attacks of issue 12 against a running GTP Explorer, with the server's
memory, CPU time and disk use printed after each (a report, not a test).

Starts `python app.py` on a free loopback port (HF_HUB_OFFLINE=1; GRADIO_TEMP_DIR and TMPDIR in
a folder this script owns and deletes), or attaches to one with --url (loopback only; pass
--pid and --temp-dir to have its memory and disk measured). After a warm-up (one run, one
`explore`) it runs, in order:

  failed-loads  a valid deit_small .safetensors (seeded random weights) run with deit_base: refused
  explores      `explore` from a new client each time (a new API session each)
  sessions      UI-like sessions: a new client runs the page's run event once (state kept)
  runs          the run event again and again on a few clients
  downloads     the Downloads button (GIF + trace JSON) after a run
  sweeps        sweep files: oversize, 100,000-deep, 3,000 methods, a `$\\frac{$` method name
  mixed load    --mixed-seconds of many clients exploring, comparing and running the page with
                fresh settings at once (`soak_clients.py`): the RSS curve and its slope per
                request over the first and the last third (it must level off), errors counted

and prints after each: RSS of the server process, its CPU seconds, the size and file count of
its temp folders, and the answers (ok / each distinct error message, counted). Endpoints are
found by name in the app's config (the page's events are undocumented API endpoints); one
missing is skipped with a message. Bounded: every count is capped, each request waits at most
the time left, and --max-seconds stops everything (the server we started included).

    python scripts/soak.py                                   # quick: a few of each
    python scripts/soak.py --failed-loads 50 --explores 200 --sessions 50 --runs 500 --downloads 100 \\
        --max-seconds 3000                                   # the targets of issue 12
    python scripts/soak.py --failed-loads 0 --explores 0 --sessions 0 --runs 0 --downloads 0 --sweeps 0 \\
        --mixed-seconds 420 --mixed-clients 8                # issue 20: memory under mixed load
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from soak_clients import App, mixed_load, repeat, report as mixed_report

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "assets" / "chelsea.png"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_COUNT = 1000               # per attack: this is a soak, not a flood
START_TIMEOUT_S = 240          # the app imports torch, timm, gradio and builds the page
FAILED_LOAD_MODEL = "deit_base_patch16_224"
WEIGHTS_MODEL = "deit_small_patch16_224"   # its weights do not fit deit_base


# ----------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py` on a free loopback port, its temp files (Gradio's and any other) in
    `work`/gradio and `work`/tmp; (process, url)."""
    port = free_port()
    (work / "gradio").mkdir()
    (work / "tmp").mkdir()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(work / "gradio"), "TMPDIR": str(work / "tmp")}
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}; see {log_path}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(1)
    stop_server(proc)
    raise SystemExit(f"app.py did not listen on port {port} within {START_TIMEOUT_S} s; see {log_path}")


def stop_server(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# ----------------------------------------------------------------------------- what is measured


def rss_mb(pid: Optional[int]) -> Optional[float]:
    if pid is None:
        return None
    try:
        import psutil
        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """User + system CPU time of the server process so far."""
    if pid is None:
        return None
    try:
        import psutil
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except ImportError:
        pass
    except Exception:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def folder_size(folder: Optional[Path]) -> tuple[Optional[float], int]:
    """(MB, number of files) under `folder`, tolerant of files vanishing while walked."""
    if folder is None or not folder.is_dir():
        return None, 0
    total, count = 0, 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
                count += 1
            except OSError:
                pass
    return total / 2**20, count


class Report:
    """One line per phase: the server's RSS (and change since the start), CPU s, temp folders."""

    def __init__(self, pid: Optional[int], temp: Optional[Path]):
        self.pid, self.temp, self.start_rss = pid, temp, None
        print(f"{'phase':<34}{'RSS MB':>9}{'ΔRSS':>8}{'CPU s':>9}{'temp MB':>9}{'files':>7}  answers")

    def line(self, phase: str, answers: Optional[collections.Counter] = None) -> None:
        rss, cpu = rss_mb(self.pid), cpu_seconds(self.pid)
        mb, files = folder_size(self.temp)
        if self.start_rss is None:
            self.start_rss = rss
        delta = None if rss is None or self.start_rss is None else rss - self.start_rss
        fmt = lambda v, spec: "?" if v is None else format(v, spec)  # noqa: E731
        print(f"{phase:<34}{fmt(rss, '9.0f')}{fmt(delta, '+8.0f')}{fmt(cpu, '9.1f')}{fmt(mb, '9.1f')}{files:7d}  "
              f"{summarise(answers)}", flush=True)


def summarise(answers: Optional[collections.Counter]) -> str:
    if not answers:
        return ""
    return "; ".join(f"{n} x {what}" for what, n in answers.most_common())


# ----------------------------------------------------------------------------- attack files


def mismatched_weights(folder: Path) -> Path:
    """A valid deit_small .safetensors (seeded random weights): loading it into deit_base fails."""
    import timm
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    path = folder / f"{WEIGHTS_MODEL}.safetensors"
    save_file(timm.create_model(WEIGHTS_MODEL, pretrained=False).state_dict(), str(path))
    return path


def sweep_files(folder: Path) -> dict[str, Path]:
    files = {
        "oversize (6 MB)": json.dumps([{"method": "gtp", "gmacs": 1.0, "top1": 70.0, "pad": "x" * 1000}] * 6000),
        "100,000-deep nesting": "[" * 100_000 + "]" * 100_000,
        "3,000 method names": json.dumps([{"method": f"m{i}", "gmacs": 1.0 + i % 17, "top1": 70.0}
                                          for i in range(3000)]),
        "method named $\\frac{$": json.dumps([{"method": "$\\frac{$", "gmacs": 3.0, "top1": 70.0}]),
        "valid sweep": json.dumps([{"method": "gtp", "gmacs": 3.4, "top1": 79.0},
                                   {"method": "tome", "gmacs": 3.3, "top1": 78.0}]),
    }
    paths = {}
    for i, (what, text) in enumerate(files.items()):
        paths[what] = folder / f"sweep_{i}.json"
        paths[what].write_text(text)
    return paths


# ----------------------------------------------------------------------------- the soak


def attacks(app: App, args: argparse.Namespace, files: Path, report: Report) -> None:
    photo = app.handle_file(str(PHOTO))
    run = app.find(r"run(_event)?(_\d+)?")
    explore = "/explore" if "/explore" in app.public else None
    if run is None:
        print("  (no run endpoint named run or run_event: UI-like sessions, runs, failed loads and downloads skipped)")
    if explore is None:
        print("  (no public /explore endpoint: explores skipped)")

    warm = app.client()
    warm_answers = collections.Counter()
    if run:
        warm_answers["run: " + app.call(warm, run, *app.args(run, photo))] += 1
    if explore:
        warm_answers["explore: " + app.call(warm, explore, photo)] += 1
    report.line("after warm-up (the baseline)", warm_answers)

    if run and args.failed_loads:
        weights = app.handle_file(str(mismatched_weights(files)))
        run_args = app.args(run, photo, weights)
        model_at = app.model_position(run)
        if model_at is None:
            print("  (the run endpoint has no model dropdown: failed loads skipped)")
        else:
            run_args[model_at] = FAILED_LOAD_MODEL
            report.line(f"failed loads x{args.failed_loads}",
                        repeat(args.failed_loads, app, lambda: app.fresh_call(run, *run_args)))
    if explore and args.explores:
        report.line(f"explore, new client x{args.explores}",
                    repeat(args.explores, app, lambda: app.fresh_call(explore, photo)))
    if run and args.sessions:
        report.line(f"UI sessions (new client) x{args.sessions}",
                    repeat(args.sessions, app, lambda: app.fresh_call(run, *app.args(run, photo))))
    if run and args.runs:
        pool = [app.client() for _ in range(min(4, args.runs))]
        clients = itertools.cycle(pool)
        report.line(f"runs on {len(pool)} clients x{args.runs}",
                    repeat(args.runs, app, lambda: app.call(next(clients), run, *app.args(run, photo))))
        for c in pool:
            c.close()
    downloads = app.find(r"downloads(_\d+)?")
    if args.downloads and (downloads is None or run is None):
        print("  (no downloads endpoint: downloads skipped)")
    elif args.downloads:
        app.call(warm, run, *app.args(run, photo))  # the Downloads button needs a run in the session
        report.line(f"downloads x{args.downloads}",
                    repeat(args.downloads, app, lambda: app.call(warm, downloads)))
    sweep = app.find(r"load_sweep(_file)?(_\d+)?")
    if sweep is None:
        print("  (no load_sweep* endpoint: sweep files skipped)")
    elif args.sweeps:
        for what, path in sweep_files(files).items():
            report.line(f"sweep: {what}",
                        collections.Counter([app.call(warm, sweep, *app.args(sweep, file=app.handle_file(str(path))))]))
    warm.close()
    if args.mixed_seconds > 0:
        load = mixed_load(app, lambda: rss_mb(report.pid), args.mixed_seconds, args.mixed_clients, PHOTO, files)
        report.line(f"mixed load {args.mixed_seconds:.0f} s", None)
        mixed_report(load, args.mixed_clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("failed-loads", 3), ("explores", 5), ("sessions", 3), ("runs", 5),
                          ("downloads", 3), ("sweeps", 1)):
        parser.add_argument(f"--{name}", type=int, default=default,
                            help=f"how many (default {default}, at most {MAX_COUNT}; sweeps: 0 = none, else one "
                                 "round of the five files)")
    parser.add_argument("--mixed-seconds", type=float, default=30, help="the mixed-load phase's length (default 30; 0: none)")
    parser.add_argument("--mixed-clients", type=int, default=8, help="clients at once in the mixed load (default 8, at most 32)")
    parser.add_argument("--max-seconds", type=float, default=600, help="hard stop for the whole soak (default 600)")
    parser.add_argument("--url", help="attach to a running app instead (loopback only)")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, to measure it")
    parser.add_argument("--temp-dir", type=Path, help="with --url: the server's GRADIO_TEMP_DIR, to measure it")
    args = parser.parse_args()
    for name in ("failed_loads", "explores", "sessions", "runs", "downloads", "sweeps"):
        if not 0 <= getattr(args, name) <= MAX_COUNT:
            parser.error(f"--{name.replace('_', '-')} must be within 0..{MAX_COUNT}")
    if not 1 <= args.mixed_clients <= 32:
        parser.error("--mixed-clients must be within 1..32")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        parser.error(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))}); this script attacks")
    started = time.monotonic()
    deadline = started + args.max_seconds
    work = Path(tempfile.mkdtemp(prefix="gtp_soak_"))  # the server's temp folders, and ours beside them
    (work / "server").mkdir()
    proc = None

    def hard_stop() -> None:  # a request stuck past the deadline: stop everything
        print(f"--max-seconds ({args.max_seconds:.0f} s) passed by 30 s: stopping", flush=True)
        stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
        os._exit(2)
    watchdog = threading.Timer(args.max_seconds + 30, hard_stop)
    watchdog.daemon = True
    watchdog.start()
    try:
        if args.url:
            url, pid, temp = args.url, args.pid, args.temp_dir
        else:
            proc, url = start_server(work / "server", work / "app.log")
            pid, temp = proc.pid, work / "server"  # its GRADIO_TEMP_DIR and TMPDIR
        print(f"GTP Explorer soak against {url} (server pid {pid or '?'}; temp {temp or '?'}); "
              f"stops after {args.max_seconds:.0f} s")
        app = App(url, deadline)
        attack_files = Path(tempfile.mkdtemp(prefix="files_", dir=work))
        report = Report(pid, temp)
        attacks(app, args, attack_files, report)
        shutil.rmtree(attack_files, ignore_errors=True)
        report.line("at the end")
        if proc is not None:
            stop_server(proc)
            mb, files = folder_size(work / "server" / "gradio")
            tmp_mb, tmp_files = folder_size(work / "server" / "tmp")
            print(f"after SIGTERM: left behind {mb:.1f} MB in {files} files (Gradio cache), "
                  f"{tmp_mb:.1f} MB in {tmp_files} files (temp folder)")
        print(f"soak took {time.monotonic() - started:.0f} s")
    finally:
        watchdog.cancel()
        stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
