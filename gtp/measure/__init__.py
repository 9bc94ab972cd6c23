"""Measuring token reduction: `data` (image folders, label files), `metrics` (agreement,
KL, cosine, timing, device name: one definition each), `evaluate` (`python -m gtp eval`,
also under torchrun), `sweep` (`python -m gtp sweep`), `bench` (`python -m gtp bench`:
the methods timed side by side), and `cuda_cost` with `gpu_model` (`python -m gtp cost`: what a
forward would cost on a GPU, modelled on fake CUDA tensors without one)."""
