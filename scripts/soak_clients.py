"""Clients of a running GTP Explorer for `scripts/soak.py`: `App` (its endpoints found by name,
calls bounded by the soak's deadline) and the mixed-load phase.

The mixed-load phase (`python scripts/soak.py --mixed-seconds 420`): clients doing what
visitors and API users do, for a while, with the server's resident memory sampled every second;
the slope of memory against requests over the last third says whether it levels off (issue 20:
it was still growing ~3.7 MB per request).

Each of `clients` threads repeats, until the time is up, one of (weights in `ACTIONS`):
  explore-new     `explore` from a new client (a new API session), a fresh setting
  explore-same    `explore` from the thread's own client, a fresh setting
  explore-cached  `explore` of a setting run before (the run cache answers)
  compare         `compare`, a fresh setting (ToMe and pruning run too)
  ui-run          the page's run event in the thread's own session (its state kept), on a photo
                  cropped anew (a fresh run), then one of the page's tabs opened (figures drawn)
A fresh setting is a random P, theta and alpha on deit_tiny (one in four on deit_small), so
nearly every request runs the models. Only the server's own process is measured (its RSS).
"""
from __future__ import annotations

import collections
import json
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

A_MODEL = "deit_base_patch16_224"  # a model the page's model dropdown offers

# ----------------------------------------------------------------------------- talking to the app


class App:
    """The app's endpoints, found by name, and calls to them bounded by the deadline."""

    def __init__(self, url: str, deadline: float):
        from gradio_client import Client, handle_file
        self.url, self.deadline, self._Client, self.handle_file = url, deadline, Client, handle_file
        probe = self.client()
        self.config = probe.config
        self.public = set(probe.view_api(return_format="dict", print_info=False)["named_endpoints"])
        self.components = {c["id"]: c for c in self.config["components"]}
        self.deps = {d.get("api_name"): d for d in self.config["dependencies"] if d.get("api_name")}
        probe.close()

    def client(self):
        # download_files=False: the answers' files stay on the server, where they are measured.
        return self._Client(self.url, verbose=False, download_files=False)

    def find(self, pattern: str) -> Optional[str]:
        """The first endpoint whose name matches `pattern` (e.g. r"run(_\\d+)?"), as "/name"."""
        for name in self.deps:
            if re.fullmatch(pattern, name):
                return "/" + name
        return None

    def args(self, endpoint: str, image: Any = None, file: Any = None) -> list:
        """Positional arguments for an endpoint: each input's default value from the page, the
        photo for an image input and `file` for a file input (State inputs are the session's)."""
        values = []
        for j in self.deps[endpoint.lstrip("/")]["inputs"]:
            comp = self.components[j]
            kind, value = comp["type"], comp.get("props", {}).get("value")
            if kind == "state":
                continue
            if kind == "image":
                value = image
            elif kind == "file":
                value = file
            values.append(value)
        return values

    def call(self, client, endpoint: str, *args, **kwargs) -> str:
        """'ok' or the error's message (one line), waiting at most the time left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return "skipped: --max-seconds reached"
        job = client.submit(*args, api_name=endpoint, **kwargs)
        try:
            job.result(timeout=left)
            return "ok"
        except Exception as e:  # AppError (the app's message), timeouts, queue full, ...
            if isinstance(e, TimeoutError) or type(e).__name__ == "TimeoutError":
                job.cancel()
                return "timed out at --max-seconds"
            message = " ".join(str(e).split()) or type(e).__name__
            return f"error: {message[:110]}"

    def fresh_call(self, endpoint: str, *args, **kwargs) -> str:
        """`call` from a new client (a new session), closed after."""
        client = self.client()
        try:
            return self.call(client, endpoint, *args, **kwargs)
        finally:
            client.close()

    def model_position(self, endpoint: str) -> Optional[int]:
        """Index, among an endpoint's non-State arguments, of the dropdown offering model names."""
        position = 0
        for j in self.deps[endpoint.lstrip("/")]["inputs"]:
            comp = self.components[j]
            if comp["type"] == "state":
                continue
            choices = json.dumps(comp.get("props", {}).get("choices", ""))
            if comp["type"] == "dropdown" and A_MODEL in choices:
                return position
            position += 1
        return None


def repeat(n: int, app: App, one: Callable[[], str]) -> collections.Counter:
    answers: collections.Counter = collections.Counter()
    for _ in range(n):
        if time.monotonic() >= app.deadline:
            answers["not run: --max-seconds reached"] += 1
            continue
        answers[one()] += 1
    return answers


# ----------------------------------------------------------------------------- the mixed-load phase

ACTIONS = {"explore-new": 3, "explore-same": 2, "explore-cached": 1, "compare": 1, "ui-run": 3}
MODELS = ("deit_tiny_patch16_224",) * 3 + ("deit_small_patch16_224",)
TABS = (r"open_layers", r"open_graphs", r"open_attention")
CROPS = 64  # photos cropped anew for the UI runs (each a different picture)


def crops(photo: Path, folder: Path, n: int = CROPS) -> list[Path]:
    """`n` different crops of `photo` (seeded), as PNG files in `folder`."""
    from PIL import Image
    rng = random.Random(0)
    image = Image.open(photo).convert("RGB")
    w, h = image.size
    paths = []
    for i in range(n):
        side = rng.randint(min(w, h) // 2, min(w, h))
        x, y = rng.randint(0, w - side), rng.randint(0, h - side)
        paths.append(folder / f"crop_{i}.png")
        image.crop((x, y, x + side, y + side)).save(paths[-1])
    return paths


def fresh_setting(rng: random.Random) -> dict:
    return dict(model=rng.choice(MODELS), num_prop=rng.randint(1, 16), sparsity=round(rng.uniform(0.3, 1.0), 2),
                alpha=round(rng.uniform(0.05, 0.5), 2))


def slope(points: list[tuple[float, float]]) -> Optional[float]:
    """Least-squares slope of y over x (None for fewer than 3 points or no spread in x)."""
    if len(points) < 3:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in points) / sxx


class Load:
    """The phase's state: requests done, answers, the memory samples."""

    def __init__(self, rss: Callable[[], Optional[float]]):
        self.rss, self.done, self.lock = rss, 0, threading.Lock()
        self.answers: collections.Counter = collections.Counter()
        self.samples: list[tuple[float, int, float]] = []  # (seconds, requests done, RSS MB)

    def count(self, what: str, answer: str) -> None:
        with self.lock:
            self.done += 1
            self.answers[f"{what}: {answer}"] += 1

    def sample(self, start: float) -> None:
        rss = self.rss()
        if rss is not None:
            self.samples.append((time.monotonic() - start, self.done, rss))


def worker(app, load: Load, stop: threading.Event, seed: int, photo, crop_files: list[Path]) -> None:
    """One client's loop until `stop` (see the module's docstring)."""
    rng = random.Random(seed)
    own = app.client()
    run = app.find(r"run(_event)?(_\d+)?")
    tabs = [e for e in (app.find(t) for t in TABS) if e]
    model_at = app.model_position(run) if run else None
    seen: list[dict] = []
    try:
        while not stop.is_set():
            what = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
            setting = rng.choice(seen) if what == "explore-cached" and seen else fresh_setting(rng)
            if what in ("explore-new", "explore-same", "explore-cached"):
                if what == "explore-new":
                    answer = app.fresh_call("/explore", photo, **setting)
                else:
                    answer = app.call(own, "/explore", photo, **setting)
                seen = (seen + [setting])[-8:]
            elif what == "compare":
                answer = app.call(own, "/compare", photo, **setting)
            elif run is None or model_at is None:
                continue
            else:
                args = app.args(run, app.handle_file(str(rng.choice(crop_files))))
                args[model_at] = setting["model"]
                answer = app.call(own, run, *args)
                if answer == "ok" and tabs:
                    tab = rng.choice(tabs)
                    load.count("ui-tab", app.call(own, tab, *app.args(tab)))
            load.count(what, answer)
    finally:
        own.close()


def mixed_load(app, rss: Callable[[], Optional[float]], seconds: float, clients: int, photo: Path,
               folder: Path) -> Load:
    """Run the phase for `seconds` with `clients` threads; the memory samples and answers."""
    load = Load(rss)
    stop = threading.Event()
    files = crops(photo, folder)
    handle = app.handle_file(str(photo))
    threads = [threading.Thread(target=worker, args=(app, load, stop, k, handle, files), daemon=True)
               for k in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() - start < seconds and time.monotonic() < app.deadline:
        load.sample(start)
        time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=max(1.0, app.deadline - time.monotonic()))
    load.sample(start)
    return load


def report(load: Load, clients: int) -> None:
    """The curve (RSS at each tenth of the requests), the slopes, the answers, the load average."""
    samples = load.samples
    if len(samples) < 3 or samples[-1][1] < 6:
        print(f"  mixed load: too few samples or requests ({len(samples)}, {load.done}) to judge")
        return
    total = samples[-1][1]
    print(f"  mixed load, {clients} clients: {total} requests in {samples[-1][0]:.0f} s; "
          f"load average now {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    tenths = [next(s for s in samples if s[1] >= total * k / 10) for k in range(11)]
    print("  requests: " + " ".join(f"{s[1]:>6d}" for s in tenths))
    print("  RSS MB:   " + " ".join(f"{s[2]:>6.0f}" for s in tenths))
    for name, lo, hi in (("first third", 0, total / 3), ("last third", 2 * total / 3, total + 1)):
        part = [(n, r) for _, n, r in samples if lo <= n <= hi]
        value = slope(part)
        print(f"  RSS slope over the {name}: " + ("?" if value is None else f"{value:+.3f} MB per request")
              + f" ({len(part)} samples)")
    errors = sum(n for what, n in load.answers.items() if not what.endswith(": ok"))
    print(f"  errors: {errors}; answers: " + "; ".join(f"{n} x {w}" for w, n in load.answers.most_common()))
