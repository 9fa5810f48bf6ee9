"""KT Studio's benchmark suite: is kt_core as fast as a plain PyTorch loop, and faster where
transfer allows? Run `python -m bench` (or `make bench`); `--quick` for a one-minute version.

- `harness.py`  timing (interleaved repeats, epoch clocks), the figure registry, the table
- `plain.py`    the plain reference loops every figure is measured against
- `figures.py`  B1-B3 and B5-B7; `ui_tax.py` B4 (the dashboard watched in a real browser)
"""
