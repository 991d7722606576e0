"""Pretraining machinery for train.py: augmentation, losses, lr schedules, recipes, run guards, run folders.

augment (SimCLR views, supervised crops, the evaluation transform) and recipes (every value a run
sets) are also read by utils/eval and test.py. Imports only the shared modules at the top of utils/.

Run its tests with `python -m pytest tests/test_augment.py tests/test_losses.py tests/test_schedule.py -q`.
"""
