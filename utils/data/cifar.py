"""CIFAR-10 / CIFAR-100: fetched through utils.data.download, extracted safely, read as uint8 arrays.

The archive is downloaded (resumable, md5-checked) into `data_dir`, extracted into
torchvision's layout (`data_dir/cifar-10-batches-py`, `data_dir/cifar-100-python`) and then read
with torchvision.datasets.CIFAR10/CIFAR100(download=False), so torchvision's own per-file md5
check still runs on the real data.

    python -c "from utils.data.cifar import load_cifar; x, y, c = load_cifar('cifar10', 'data', train=True); print(x.shape, y[:10], c)"
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from utils.data.archive import extract_into_place
from utils.data.constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, DatasetInfo
from utils.data.download import fetch_archive, file_lock
from utils.errors import DataMissingError, UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CifarSource:
    """Where an archive comes from (URL, bytes, md5 from /work/shared/REFERENCES.md, which
    match torchvision's `tgz_md5`) and the files its folder must hold (torchvision's layout)."""

    name: str
    title: str
    url: str
    size: int
    md5: str
    folder: str
    files: tuple[str, ...]

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CIFAR_SOURCES: dict[str, CifarSource] = {
    "cifar10": CifarSource(
        "cifar10", "CIFAR-10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", 170_498_071,
        "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
         "batches.meta"),
    ),
    "cifar100": CifarSource(
        "cifar100", "CIFAR-100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", 169_001_437,
        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", ("train", "test", "meta"),
    ),
}
_NAME_SPELLINGS = {"cifar-10": "cifar10", "cifar_10": "cifar10", "cifar-100": "cifar100", "cifar_100": "cifar100"}


def cifar_source(name: str) -> CifarSource:
    """The CifarSource for 'cifar10' or 'cifar100' (a few spellings accepted)."""
    key = _NAME_SPELLINGS.get(name.lower(), name.lower())
    if key not in CIFAR_SOURCES:
        raise UserError(f"unknown CIFAR dataset {name!r}; choose one of {sorted(CIFAR_SOURCES)}")
    return CIFAR_SOURCES[key]


def cifar_ready(name: str, data_dir: str | Path) -> bool:
    """True when the extracted folder holds every file torchvision reads (no network, no hashing)."""
    src = cifar_source(name)
    folder = Path(data_dir) / src.folder
    return all((folder / f).is_file() for f in src.files)


def _missing(src: CifarSource, data_dir: Path, why: str) -> DataMissingError:
    return DataMissingError(
        f"{src.title} not found at {data_dir / src.folder} ({why}); run `python data.py --dataset {src.name} "
        f"--data_dir {data_dir}` with network access, or put {src.filename} ({src.url}) in {data_dir}"
    )


def ensure_cifar(
    name: str, data_dir: str | Path, download: bool = True, url: str | None = None, md5: str | None = None, force: bool = False
) -> Path:
    """Make sure `data_dir/<torchvision folder>` is complete; return that folder.

    Uses an archive already in `data_dir` (md5-checked), else downloads it when `download`.
    `url`/`md5` name a mirror; the official size is only enforced with the official md5.
    `force` re-extracts (and re-downloads an archive that fails its check).
    Raises DataMissingError when the data is absent and cannot be fetched.
    """
    src = cifar_source(name)
    data_dir = Path(data_dir)
    folder = data_dir / src.folder
    if not force and cifar_ready(name, data_dir):
        return folder
    md5 = (md5 or src.md5).lower()
    size = src.size if md5 == src.md5 else None
    archive = data_dir / src.filename
    with file_lock(data_dir / f".{src.name}.lock"):
        if not force and cifar_ready(name, data_dir):  # another process finished while we waited
            return folder
        fetch_archive(archive, url or src.url, md5, size, force=force, download=download,
                      missing=lambda why: _missing(src, data_dir, why), redo=f"python data.py --dataset {src.name} --force")
        if folder.exists():  # incomplete (files missing) or --force: rebuild it from the archive
            shutil.rmtree(folder)
        logger.info("extracting %s", archive)
        extract_into_place(archive, folder, member_root=src.folder)
    if not cifar_ready(name, data_dir):
        raise UserError(f"{archive} does not hold the expected {src.title} files {list(src.files)}")
    return folder


def load_cifar(
    name: str, data_dir: str | Path, train: bool, download: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load a CIFAR split, fetching it first when needed.

    Returns images uint8 (N, 32, 32, 3) HWC RGB, labels int64 (N,) and the class names.
    Raises DataMissingError when absent and not downloadable, UserError when corrupt.
    """
    src = cifar_source(name)
    ensure_cifar(src.name, data_dir, download=download)
    from torchvision import datasets  # imported here: ~4 s, only needed when CIFAR is read

    cls = datasets.CIFAR10 if src.name == "cifar10" else datasets.CIFAR100
    try:
        ds = cls(root=str(data_dir), train=train, download=False)
    except RuntimeError as exc:  # torchvision's per-file md5 check failed
        raise UserError(
            f"{src.title} in {Path(data_dir) / src.folder} is corrupted ({exc}); "
            f"run `python data.py --dataset {src.name} --data_dir {data_dir} --force`"
        ) from None
    images = np.ascontiguousarray(ds.data, dtype=np.uint8)
    labels = np.asarray(ds.targets, dtype=np.int64)
    return images, labels, list(ds.classes)


def _load(name: str, data_dir, split: str, download: bool, image_size: int | None):
    return load_cifar(name, data_dir, train=split == "train", download=download)


CIFAR10 = DatasetInfo("cifar10", 10, 32, CIFAR10_MEAN, CIFAR10_STD, load=partial(_load, "cifar10"),
                      prepare=partial(ensure_cifar, "cifar10"), ready=partial(cifar_ready, "cifar10"),
                      source=CIFAR_SOURCES["cifar10"].url, sizes=(50_000, 10_000), balanced=True)
CIFAR100 = DatasetInfo("cifar100", 100, 32, CIFAR100_MEAN, CIFAR100_STD, load=partial(_load, "cifar100"),
                       prepare=partial(ensure_cifar, "cifar100"), ready=partial(cifar_ready, "cifar100"),
                       source=CIFAR_SOURCES["cifar100"].url, sizes=(50_000, 10_000), balanced=True)
