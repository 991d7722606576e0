"""Evaluation of a frozen backbone: features, the linear probe (SGD/Adam or L-BFGS), fine-tuning, kNN.

features -> probe (run_linear_probe, run_finetune; lbfgs_probe the convex solver) and knn (the
monitor train.py also uses). Reads utils/data (datasets) and the shared modules (augment: the evaluation
transform; schedule: the cosine); never utils/train; within utils/, nothing imports it.

Run its tests with `python -m pytest tests/test_probe.py tests/test_lbfgs_probe.py tests/test_knn.py -q`.
"""
