"""Shared building blocks, grouped by role: data/ (acquisition), train/ (pretraining), eval/ (the probe).

At the top level, what every part uses: errors, io, cli, runtime, distributed, checkpoint,
plotting; and sweep, the study's helpers for simclr_train.py.
"""
