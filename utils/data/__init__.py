"""Data acquisition: download, safe extraction, decoding, the datasets as uint8 arrays, training batches.

download, archive -> one module per dataset: cifar, tinyimagenet, folder (+ decode), synthetic,
digits, mnist (MNIST and Fashion-MNIST), stl10, each describing itself with a DatasetInfo
(constants: classes, size, mean/std, loader) -> registry (the one table of datasets) -> datasets
(load_split, subsets) -> loaders (resumable training batches); weights fetches torchvision's
ImageNet ResNet-18 weights for the model builders. Imports only the shared modules at the top of
utils/ (errors, io, distributed). The datasets for a user: docs/datasets.md.

Run its tests with `python -m pytest tests/test_download.py tests/test_archive.py tests/test_datasets.py
tests/test_real_datasets.py -q`.
"""
