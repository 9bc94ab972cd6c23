"""Measuring token reduction: `data` (image folders, label files), `metrics` (agreement,
KL, cosine, timing, device name: one definition each), `evaluate` (`python -m gtp eval`,
also under torchrun) and `sweep` (`python -m gtp sweep`). `gtp.bench` times the methods."""
