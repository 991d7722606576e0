"""Data acquisition: download, safe extraction, decoding, the datasets as uint8 arrays, training batches.

download, archive -> cifar, tinyimagenet, folder (+ decode), synthetic -> datasets (load_split,
subsets) -> loaders (resumable training batches); constants holds each dataset's classes, size and
mean/std; weights fetches torchvision's ImageNet ResNet-18 weights for the model builders. Imports
only the shared modules at the top of utils/ (errors, io, distributed).

Run its tests with `python -m pytest tests/test_download.py tests/test_archive.py tests/test_datasets.py -q`.
"""
