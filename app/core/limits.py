"""Every bound the app puts on memory, disk, time and input, in one place.

A public Space must stay up under abuse, so nothing the app keeps or accepts is unbounded;
each number below says what it bounds and why it has the value it has. Environment variables
(`GTP_APP_*`) override the cache sizes for a bigger or smaller host.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from gtp import weights as _weights
from gtp import weights_child as _reader


def _env_int(name: str, default: int, least: int = 1) -> int:
    try:
        return max(least, int(os.environ.get(name, default)))
    except ValueError:
        return default


# ----------------------------------------------------------------------------- memory: caches

MODEL_CACHE_ENTRIES = _env_int("GTP_APP_MODEL_CACHE", 2)
"""Loaded models kept (by model name + weights file). deit_base is ~350 MB; two fit any host."""

RUN_CACHE_ENTRIES = _env_int("GTP_APP_RESULT_CACHE", 8)
RUN_CACHE_BYTES = 256 * 2**20
"""Finished runs kept (by photo hash + model + weights + configuration). Measured size of one
run's result with its attention maps (bfloat16): deit_small 6.9 MiB, deit_base 13.6 MiB, so
the entry bound binds first; the byte bound guards against larger models."""

SHARED_RUN_BYTES = 160 * 2**20
"""The classroom's runs: the example photos at the published setting, computed once and served
to every session (`app.core.inference.explore_photo`), kept apart from RUN_CACHE so that no
upload pushes them out. One entry per example photo and loaded model (4 x MODEL_CACHE_ENTRIES);
the bytes bound is 8 deit_base-sized runs with room."""

GMACS_CACHE_ENTRIES = 512
"""GMACs kept (by model + configuration): a float each; counting one takes seconds on a CPU."""

FIGURE_CACHE_ENTRIES = 512
FIGURE_CACHE_BYTES = 192 * 2**20
"""Drawn figures kept (by run key + view), as plotly JSON: at most ~0.25 MB each, ~0.6 MB for
all the views of one deit_small run (`python scripts/app_latency.py` prints them); the GIF's
frames of a run (~7 MB of pictures) when its Downloads are made."""

TRADEOFF_CACHE_ENTRIES = 32
"""Trade-off charts kept (by measured GMACs + sweep records)."""

LINK_CHECK_CACHE_ENTRIES = 256
"""Links' settings checked against their model, kept (a sentence or None each), so a class
opening one link checks it once, not once per student under the model's lock."""

COUNTING_MODELS = 1
"""CPU models kept only to count GMACs on a CUDA host (counting needs no GPU and no weights)."""


# ----------------------------------------------------------------------------- memory: sessions

SESSION_TTL_S = 30 * 60
"""A session's state (its run, sweep records) is dropped this long after its last update:
API clients never close their session, so without it every client would stay in memory."""

SESSION_CAPACITY = 200
"""Sessions whose state is kept at once (Gradio's default is 10,000); the oldest go first.
A run session holds about 18 MB of state (mostly shared with the run cache)."""


# ----------------------------------------------------------------------------- disk

MAX_UPLOAD = "400mb"
MAX_UPLOAD_BYTES = 400 * 2**20
"""Largest upload accepted: deit_base weights are ~346 MB (float32 .safetensors), with room."""

GRADIO_CACHE_CLEANUP = (600, 1800)
"""Gradio's `delete_cache=(every, older_than)` seconds: uploads and copies of our figures
older than 30 minutes are deleted every 10 minutes."""

DOWNLOAD_FOLDERS_KEPT = 16
"""Download folders (GIF + JSON) kept on disk; older ones are deleted."""

FIGURE_DPI = 150
"""PNG resolution of "Download figures" (`app.views.figures`): the paper-sized figures (3.3 or 7 in
wide) at 150 dpi are 500-1050 px wide; the PDFs beside them are vector."""

FIGURE_ZIP_MAX_BYTES = 24 * 2**20
"""Largest "Download figures" zip: the five figures of a deit_small run in PDF and PNG came to
3.1 MB (the walk grid holds the photo twelve times); a larger model's grid has more panels. The
work is fixed by the model (five figures of fixed size): drawing them took 6.8 s of CPU time for a
deit_small run (measured here under heavy load: process time, not wall time), one request at a
time in the models' queue; the figures are freed when the zip is written."""

PHOTO_FILES_KEPT = 256
"""Photos kept on disk for the figures that show them (~8 kB each): more than the figure cache
can hold runs of (FIGURE_CACHE_ENTRIES over the 7 views of a run), so a cached figure never
loses its photo."""


# ----------------------------------------------------------------------------- uploaded photos

MAX_PHOTO_BYTES = 50 * 2**20   # a photo file larger than this is refused unread
MAX_PIXELS = 50_000_000        # decoding refused past this many pixels (a decompression bomb)
MIN_SIDE = 16                  # pixels; smaller than this there is no picture to split into patches
MAX_FRAMES_COUNTED = 100       # an animation's frames are counted (for the note) up to this many
WORKING_SIDE = 1024            # photos are shrunk to this longest side before anything else (speed)


# ----------------------------------------------------------------------------- uploaded sweep files

# A real `python -m gtp sweep` file is a few hundred records of depth 3 (a list of records
# holding a `timing` dict and `num_prop` lists) and a handful of methods.
MAX_SWEEP_BYTES = 5 * 2**20    # 5 MB
MAX_SWEEP_DEPTH = 16           # nested [ / { levels (json.loads recurses once per level)
MAX_SWEEP_RECORDS = 5_000      # rows / records read (usable or not)
MAX_SWEEP_METHODS = 12         # distinct method names: one chart series each
MAX_LABEL_CHARS = 80           # a method name or label longer than this is cut


# ----------------------------------------------------------------------------- uploaded weights
# What a weights file may hold is the library's to say, by model (`gtp.models.weights_bounds`: its
# bytes, tensors, header and pickle sizes); the app names here what it relies on.

WEIGHTS_READ_TIMEOUT_S = _reader.READ_TIMEOUT_S
"""Longest the library's reader child may take over one torch.save archive (`gtp.weights_child`);
then it is killed and the file refused. The check runs in its own queue (`app.ui.events`), so it
holds up the person who uploaded the file, never the models' queue every run waits on."""

REFUSED_WEIGHTS_TTL_S = _weights.REFUSED_TTL_S
REFUSED_WEIGHTS_ENTRIES = _weights.REFUSED_ENTRIES
"""Refused weights files are remembered by their content's hash this long (seconds), this many
(`gtp.weights.REFUSED`): the same file sent again is refused at once, for the cost of one hash."""

CHECKED_WEIGHTS_ENTRIES = 64
"""Uploaded weights files (by session, model and path) that loaded once: a run of that session may
load them again after the model cache dropped them. A run given any other file is refused at once
(`app.core.weights`)."""

WEIGHTS_CHECKS_AT_ONCE = 4
"""Weights checks past their cheap (header) checks at once, all sessions together, and one per
session; another is refused at once with a message rather than kept waiting in a server thread.
Their loads take turns (one model load at a time), so a person's check waits at most this many
others' loads, each bounded by WEIGHTS_READ_TIMEOUT_S and the model's build."""

READER_IDLE_S = _reader.READER_IDLE_S
"""The reader server (~315 MB of its own memory, 3 s to start: Python and torch, measured) is
started when someone opens "Your own weights", not at start-up, and exits after this long idle."""


# ----------------------------------------------------------------------------- memory: the allocator

MALLOC_ARENAS = _env_int("GTP_APP_MALLOC_ARENAS", 2, least=0)
"""glibc malloc arenas at most (`mallopt(M_ARENA_MAX)`; its default is 8 per core; 0 here: leave
it). Each server thread that runs a request gets an arena that keeps the high-water mark of what
it once held."""

TRIM_EVERY_S = _env_int("GTP_APP_TRIM_EVERY_S", 2, least=0)
"""After a request, freed heap memory is handed back to the system (`malloc_trim`, ~20 ms on a
400 MB heap, measured) at most this often, in a thread of its own: without it the server's
memory grew ~1.1 MB per fresh run (deit_tiny, 200 runs on 4 clients) while what it held stayed flat."""


# ----------------------------------------------------------------------------- messages

MAX_MESSAGE_CHARS = _weights.MAX_MESSAGE_CHARS
"""Longest message the page or the API shows for a refusal (one line; values it repeats are cut
shorter, `app.core.plain.shown`)."""


# ----------------------------------------------------------------------------- time

QUEUE_SIZE = 64
"""Requests waiting for the model at most; more get a polite 'queue full'."""

SERVER_ENVIRONMENT = {"GRADIO_ANALYTICS_CACHE_FREQUENCY": "100", "GRADIO_ANALYTICS_MAX_EVENTS": "2000",
                      "MPLBACKEND": "agg"}
"""Set (unless already set) before the queue is made, for the time every event costs. Gradio keeps
statistics of past events and by default recomputes them with pandas after EVERY event, over up to
10,000 kept: here every 100 events, over at most 2,000. Gradio also sets matplotlib's backend around
every event; with none chosen, the first event imports pyplot to find one (a second or two while
every other request waits): 'agg' is chosen here (the app draws no matplotlib figure)."""


@dataclass(frozen=True)
class Throughput:
    """What one 'Measure throughput' request may cost on a kind of device."""
    max_batch: int          # largest batch accepted
    default_batch: int      # the batch the page offers first
    budget_s: float         # most seconds the measurement may hold the model (both models, all batches):
                            # the number of timed batches is cut to fit after the warm-up batch shows one's cost
    max_batches: int        # timed batches per model at most, however fast they are


THROUGHPUT = {"cpu": Throughput(max_batch=16, default_batch=8, budget_s=4.0, max_batches=10),
              "cuda": Throughput(max_batch=256, default_batch=64, budget_s=10.0, max_batches=10)}
"""By device kind (`app.core.models.DEVICE.type`: the app runs on "cpu" or "cuda")."""

MAX_MEASUREMENTS = 16
"""Throughput measurements a session keeps for its chart (the same batch size is replaced)."""

GPU_DURATION_RUN_S = 20
"""ZeroGPU reservation (seconds) for one new photo: GTP (traced, then timed), the full model
(once) and the compared methods. Measured on this project's shared 2-core CPU (no GPU was
available to measure on; load average 3): one call takes 1.7-2 s warm for deit_small and 9-13 s
for deit_base; a GPU runs the same 5 forwards at batch 1 in well under a second, so 20 s leaves room for a cold worker's CUDA set-up
while staying far below the 60 s default (a shorter reservation queues sooner). To re-measure
on the Space's card, time one `app.core.inference.run_photo` call on CUDA and set 3x its cold time."""

WORKER_CPU_THREADS = 1
"""CPU threads in a forked ZeroGPU worker (`app.core.workers.enter_gpu_call`): more than one
hangs where the parent's OpenMP pool was in use before the fork; the worker's work is on the GPU."""

WORKER_EXIT_DELAY_S = 2.0
"""A worker that cannot serve (forked before the model was loaded) ends this long after raising,
time enough for `spaces` to read its answer."""

GPU_DURATION_THROUGHPUT_S = 30
"""ZeroGPU reservation for one throughput measurement: THROUGHPUT['cuda'].budget_s plus the
warm-up batches of both models and CUDA initialisation."""


# ----------------------------------------------------------------------------- launch

def launch_options() -> dict:
    """Keyword arguments for `demo.launch` that bound sessions and uploads."""
    return dict(max_file_size=MAX_UPLOAD, state_session_capacity=SESSION_CAPACITY)


# ----------------------------------------------------------------------------- measured curves

CURVE_METHODS = ("gtp", "tome", "pruning", "random", "downsample", "pitome")
CURVE_NUM_PROP = (4, 8, 12, 16)
"""The trade-off chart's measured curves: these methods at these P (matched GMACs at each P)."""

CURVE_VIEWS = 5
"""Views of the bundled photos the curves are measured on (each photo once, as the model sees it):
24 forwards of 5 images, about 30 s for DeiT-S on a quiet 2-core CPU, well under a second on a GPU."""

CURVE_FILES_KEPT = 8
"""Measured-curve files (one per model and weights, ~6 kB each) kept on disk; older ones are deleted."""

GPU_DURATION_CURVES_S = 60
"""ZeroGPU reservation for one curve measurement (24 batched forwards of 5 images and the GMACs counts)."""
