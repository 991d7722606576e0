"""Pretraining machinery for train.py: losses, run guards, run folders.

The pieces evaluation reads too (augment: SimCLR views, supervised crops, the evaluation transform;
schedule: the lr schedules; recipes: every value a run sets) are shared modules at the top of utils/.
Imports only the shared modules at the top of utils/.

Run its tests with `python -m pytest tests/test_losses.py tests/test_resume.py -q`.
"""
