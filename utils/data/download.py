"""The one downloader: resumable, time-limited, checksummed HTTP(S) downloads.

torchvision's downloader writes straight to the final name, has no timeout, no resume and no
retry, and trusts any existing file when no md5 is given. This one instead

- streams into `<name>.part` and renames it to `<name>` only after the size and md5 match, so a
  file under its final name has always been verified (atomic `os.replace`);
- resumes a `.part` file with an HTTP `Range` request, and restarts cleanly from byte 0 when the
  server answers `200` (Range ignored) instead of `206`;
- has connect/read timeouts and a bounded number of retries with exponential backoff for
  failures in the middle of a transfer, but fails at once when the host cannot be reached at all
  on the first attempt (offline machine: no retry storm);
- follows redirects itself and refuses one from https to http (a downgrade is never silent).

    python -c "from utils.data.download import download_file; download_file('https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz', 'data/cifar-10-python.tar.gz', md5='c58f30108f718f92721af3b95e74349a')"
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from tqdm import tqdm

from utils.errors import UserError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # TCP/TLS handshake; an unreachable host fails after this once
READ_TIMEOUT_S = 60.0  # silence between two packets; slow academic hosts stay under this
RETRIES = 5  # consecutive failed attempts (no new bytes) tolerated mid-transfer
MAX_ATTEMPTS = 50  # hard cap on attempts per download, even when each one made progress
BACKOFF_S = 1.0  # first retry delay; doubles each time
BACKOFF_CAP_S = 30.0
MAX_REDIRECTS = 10
CHUNK_BYTES = 1 << 20  # 1 MiB: few syscalls, smooth progress bar
PART_SUFFIX = ".part"
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_RETRYABLE_STATUS = (408, 425, 429, 500, 502, 503, 504)
_LOCAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EFBIG)


class DownloadError(UserError):
    """A download failed; the message is one line saying why."""


class NetworkError(DownloadError):
    """The host could not be reached, or the transfer kept failing.

    `reason` is a short form without the URL, for callers that wrap it in their own message.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class ChecksumError(DownloadError):
    """The bytes arrived but their size or md5 is not the expected one."""


class _TransferFailed(Exception):
    """Internal: one attempt failed in a way that a retry may fix."""


def md5sum(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex md5 of a file, read in chunks (constant memory)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | Path, md5: str | None = None, size: int | None = None, label: str | None = None) -> None:
    """Raise ChecksumError unless `path` has the given size and md5 (each check skipped if None).

    `label` names the file in the message (default: the path).
    """
    path = Path(path)
    label = label or str(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(f"{label} has {actual_size:,} bytes, expected {size:,}")
    if md5 is not None:
        actual = md5sum(path)
        if actual.lower() != md5.lower():
            raise ChecksumError(f"md5 mismatch for {label}: got {actual}, expected {md5.lower()}")


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if needed) for the `with` block.

    Several processes (e.g. the ranks of a multi-GPU run) may ask for the same dataset at once;
    the lock makes one of them download/extract while the others wait and then find it done.
    On systems without fcntl (Windows) this is a no-op.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the folders here are data folders: --data_dir that is a file, or unwritable
        why = {FileExistsError: "it is a file", NotADirectoryError: "a part of that path is a file"}.get(
            type(exc), exc.strerror or str(exc))
        raise UserError(f"cannot use {path.parent} as the data folder (--data_dir): {why}") from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def next_redirect_url(current_url: str, location: str) -> str:
    """Resolve a redirect's Location against `current_url`; refuse https -> http downgrades."""
    target = urljoin(current_url, location)
    old, new = urlsplit(current_url).scheme.lower(), urlsplit(target).scheme.lower()
    if new not in ("http", "https"):
        raise DownloadError(f"refusing redirect from {current_url} to unsupported URL {target}")
    if old == "https" and new != "https":
        raise DownloadError(f"refusing redirect from https to plain http: {current_url} -> {target}")
    return target


def _describe(exc: BaseException) -> str:
    """A short reason for a network exception, found by walking its cause/context chain."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror) or "NameResolution" in type(e).__name__:
            return "name resolution failed, offline?"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, (socket.timeout, TimeoutError)) or "Timeout" in type(e).__name__:
            return "timed out"
        if isinstance(e, ConnectionResetError):
            return "connection reset"
        if isinstance(e, (http.client.IncompleteRead, urllib3.exceptions.IncompleteRead)):
            return "connection closed mid-transfer"
        stack.extend([e.__cause__, e.__context__])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _content_total(response: requests.Response, offset: int) -> int | None:
    """Total file size announced by the server (Content-Range total or offset + Content-Length)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit():
        return offset + int(length)
    return None


def _open(session: requests.Session, url: str, offset: int, timeout: tuple[float, float]) -> requests.Response:
    """GET `url` (following redirects ourselves), asking for bytes from `offset` when > 0."""
    headers = {"Accept-Encoding": "identity"}  # the raw file bytes, never a re-encoded stream
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    for _ in range(MAX_REDIRECTS + 1):
        response = session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=False)
        if response.status_code not in _REDIRECT_CODES:
            return response
        location = response.headers.get("Location")
        response.close()
        if not location:
            raise DownloadError(f"{url} answered {response.status_code} without a Location header")
        url = next_redirect_url(url, location)
    raise DownloadError(f"too many redirects starting from {url}")


def _attempt(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    timeout: tuple[float, float],
    chunk_bytes: int,
    progress: bool,
    desc: str,
) -> None:
    """One GET into `part` (resumed when possible). Raises _TransferFailed for retryable trouble."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # not a prefix of the expected file
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # complete already; the caller verifies it
    try:
        response = _open(session, url, offset, timeout)
    except requests.RequestException as exc:
        raise _TransferFailed(_describe(exc)) from exc
    with response:
        status = response.status_code
        if status == 416 and offset > 0:  # nothing left after `offset`, or not a valid prefix
            if _content_total(response, 0) == offset:
                return  # the .part is complete already; the caller verifies it
            part.unlink()
            raise _TransferFailed("server refused to resume (416); restarting from byte 0")
        if status in _RETRYABLE_STATUS:
            raise _TransferFailed(f"HTTP {status} from {urlsplit(url).netloc}")
        if status not in (200, 206):
            raise DownloadError(f"HTTP {status} {response.reason or ''} for {url}".strip())
        mode = "ab"
        if status == 200 or offset == 0:
            if offset:  # server ignored Range: start over rather than append a second copy
                logger.info("server ignored the resume request; restarting %s from byte 0", desc)
            offset, mode = 0, "wb"
        else:
            start = response.headers.get("Content-Range", "").partition(" ")[2].partition("-")[0]
            if start.strip() != str(offset):  # a 206 for the wrong range cannot be appended
                part.unlink()
                raise _TransferFailed(f"server resumed at byte {start or '?'} instead of {offset}")
        total = _content_total(response, offset)
        if size is not None and total is not None and total != size:
            raise ChecksumError(f"{url} is {total:,} bytes, expected {size:,}: wrong file or mirror")
        total = total if total is not None else size
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=desc, disable=None if progress else True, leave=False)
        try:
            with open(part, mode) as out, bar:
                # raw.stream(decode_content=False): the bytes on the wire, even if a server
                # wrongly labels a .tar.gz with Content-Encoding: gzip.
                for block in response.raw.stream(chunk_bytes, decode_content=False):
                    out.write(block)
                    bar.update(len(block))
        except OSError as exc:
            if exc.errno in _LOCAL_ERRNOS:  # our disk, not the network: retrying cannot help
                raise DownloadError(f"cannot write {part}: {exc.strerror}") from None
            raise _TransferFailed(_describe(exc)) from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise _TransferFailed(_describe(exc)) from exc
    received = part.stat().st_size
    if total is not None and received < total:
        raise _TransferFailed(f"connection closed after {received:,} of {total:,} bytes")


def download_file(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    size: int | None = None,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest`, verified; return `dest`.

    An existing `dest` is accepted without any network access if it matches `md5`/`size`
    (ChecksumError otherwise: we never overwrite a file we did not write). Partial data lives
    in `dest + ".part"` and is resumed by the next call. Raises NetworkError when the host is
    unreachable (immediately on the first attempt) or the transfer fails `retries` times in a
    row without progress, ChecksumError on a size/md5 mismatch (the .part is deleted, no file
    appears under `dest`), DownloadError on HTTP errors such as 404.
    """
    dest = Path(dest)
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise DownloadError(f"unsupported URL (need http:// or https://): {url}")
    if dest.exists():
        verify_file(dest, md5, size)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    host = urlsplit(url).netloc
    timeout = (connect_timeout, read_timeout)
    failures = 0  # consecutive failed attempts
    connected = False  # have we ever got an HTTP response from this host in this call?
    with requests.Session() as session:
        for _ in range(MAX_ATTEMPTS):
            before = part.stat().st_size if part.exists() else 0
            try:
                _attempt(session, url, part, size, timeout, chunk_bytes, progress, dest.name)
                break
            except _TransferFailed as exc:
                reason = str(exc)
                unreachable = _never_connected(exc.__cause__)
                if unreachable and not connected:
                    # DNS failure, refused or unroutable on the first contact: offline, fail now.
                    short = f"cannot reach {host}: {reason}"
                    raise NetworkError(f"{short} (downloading {url})", short) from None
                connected = connected or not unreachable
                after = part.stat().st_size if part.exists() else 0
                # Count consecutive failures; one that brought new bytes starts the count afresh.
                failures = 1 if after > before else failures + 1
                if failures > retries:
                    short = f"download from {host} failed: {reason} ({failures} failed attempts in a row)"
                    raise NetworkError(f"{short} (downloading {url})", short) from None
                delay = min(backoff * 2 ** max(failures - 1, 0), BACKOFF_CAP_S)
                logger.warning("%s: %s; retrying in %.1f s (%d/%d)", dest.name, reason, delay, failures, retries)
                time.sleep(delay)
        else:
            raise NetworkError(f"download of {url} did not finish after {MAX_ATTEMPTS} attempts",
                               f"download from {host} did not finish after {MAX_ATTEMPTS} attempts")
    try:
        verify_file(part, md5, size, label=f"{dest.name} downloaded from {url}")
    except ChecksumError:
        part.unlink(missing_ok=True)  # resuming a corrupt file can never fix it
        raise
    os.replace(part, dest)
    return dest


def fetch_archive(path: Path, url: str, md5: str, size: int | None, *, force: bool, download: bool,
                  missing: Callable[[str], Exception], redo: str) -> None:
    """Leave at `path` a file of the given md5 (and size): the one already there, or `url` downloaded.

    A file there that fails its check is refused (ChecksumError, its message ending with `redo`, the command
    that fetches it again) unless `force`, which downloads it again. With no file and `download` false, or
    a failed download, raises `missing(why)` (a dataset's DataMissingError naming every way to get it).
    """
    if path.exists():
        try:
            verify_file(path, md5, size)
        except ChecksumError as exc:
            if not force:
                raise ChecksumError(f"{exc}; delete it or rerun with `{redo}`") from None
            logger.warning("%s; downloading it again", exc)
            path.unlink()
    if path.exists():
        return
    if not download:
        raise missing("no archive and download disabled")
    try:  # the progress bar names the file; an offline machine gets one line, the error
        download_file(url, path, md5=md5, size=size)
    except NetworkError as exc:
        raise missing(f"download failed: {exc.reason}") from None


def _never_connected(exc: BaseException | None) -> bool:
    """True when `exc` says no connection was established (DNS, refused, connect timeout)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (requests.ConnectTimeout, urllib3.exceptions.NewConnectionError,
                          urllib3.exceptions.ConnectTimeoutError, socket.gaierror, ConnectionRefusedError)):
            return True
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return False
