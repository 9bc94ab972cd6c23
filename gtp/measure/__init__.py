"""Measuring token reduction: `data` (image folders, label files), `metrics` (agreement,
KL, cosine, timing, device name: one definition each), `evaluate` (`python -m gtp eval`,
also under torchrun), `sweep` (`python -m gtp sweep`) and `bench` (`python -m gtp bench`:
the methods timed side by side)."""
