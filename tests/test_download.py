"""utils/data/download.py against a local HTTP server on 127.0.0.1 with scripted faults.

    python -m pytest tests/test_download.py -q

`LocalServer` is also used by tests/test_tinyimagenet.py and tests/test_data_script.py.
"""
from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from utils.data.download import (ChecksumError, DownloadError, NetworkError, download_file, md5sum,
                                 next_redirect_url)

PAYLOAD = bytes(range(256)) * 1200  # 307,200 bytes: several chunks at a 16 KiB chunk size
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
FAST = dict(connect_timeout=2.0, read_timeout=1.0, backoff=0.05, chunk_bytes=16 * 1024, progress=False)


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 serving in-memory files, with per-path fault modes.

    Modes: "ok" (honours Range with 206), "ignore_range" (always 200 + whole body),
    "drop_once" (first request: headers for the whole body, half of it, then the connection is
    cut; later requests as "ok"), "drop_always" (every request cut halfway), "stall" (headers and
    a few bytes, then silence), "redirect:<path>" (302), "404".
    `requests` logs (path, Range header or None) for every request received.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()  # wakes stalled handlers at shutdown
        self._dropped: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add(self, path: str, data: bytes, mode: str = "ok") -> str:
        self.files["/" + path.lstrip("/")] = data
        self.modes["/" + path.lstrip("/")] = mode
        return self.url(path)

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == "/" + path.lstrip("/")]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path, range_header = h.path, h.headers.get("Range")
        self.requests.append((path, range_header))
        mode = self.modes.get(path, "404")
        if mode.startswith("redirect:"):
            h.send_response(302)
            h.send_header("Location", mode.split(":", 1)[1])
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if mode == "404" or path not in self.files:
            h.send_error(404)
            return
        data = self.files[path]
        start = 0
        if range_header and mode not in ("ignore_range",) and range_header.startswith("bytes="):
            start = int(range_header[len("bytes="):].split("-")[0])
        if start >= len(data) and start > 0:
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = data[start:]
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "none" if mode == "ignore_range" else "bytes")
        h.end_headers()
        cut = mode == "drop_always" or (mode == "drop_once" and path not in self._dropped)
        if cut:
            self._dropped.add(path)
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return
        if mode == "stall":
            h.wfile.write(body[:1000])
            h.wfile.flush()
            self.release.wait(timeout=30)
            return
        h.wfile.write(body)

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with LocalServer() as s:
        yield s


def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plain_download_verified_and_no_part_left(server, tmp_path):
    url = server.add("f.bin", PAYLOAD)
    dest = download_file(url, tmp_path / "f.bin", md5=PAYLOAD_MD5, size=len(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    assert server.ranges("f.bin") == [None]


def test_cut_connection_then_rerun_resumes_with_range(server, tmp_path):
    url = server.add("f.bin", PAYLOAD, mode="drop_once")
    dest = tmp_path / "f.bin"
    with pytest.raises(NetworkError):
        download_file(url, dest, md5=PAYLOAD_MD5, retries=0, **FAST)
    part = tmp_path / "f.bin.part"
    assert not dest.exists()
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD) and part.read_bytes() == PAYLOAD[:kept]
    download_file(url, dest, md5=PAYLOAD_MD5, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges("f.bin") == [None, f"bytes={kept}-"]


def test_cut_connection_is_retried_within_one_call(server, tmp_path):
    url = server.add("f.bin", PAYLOAD, mode="drop_once")
    download_file(url, tmp_path / "f.bin", md5=PAYLOAD_MD5, size=len(PAYLOAD), **FAST)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    ranges = server.ranges("f.bin")
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=")


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url = server.add("f.bin", PAYLOAD, mode="ignore_range")
    # A stale .part whose bytes differ from the file: appending to it would corrupt the result.
    (tmp_path / "f.bin.part").write_bytes(b"\xff" * 5000)
    download_file(url, tmp_path / "f.bin", md5=PAYLOAD_MD5, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert server.ranges("f.bin") == ["bytes=5000-"]


def test_stalled_server_times_out_within_seconds(server, tmp_path):
    url = server.add("f.bin", PAYLOAD, mode="stall")
    start = time.monotonic()
    with pytest.raises(NetworkError, match="timed out"):
        download_file(url, tmp_path / "f.bin", md5=PAYLOAD_MD5, retries=1, **FAST)
    assert time.monotonic() - start < 8
    assert not (tmp_path / "f.bin").exists()
    assert len(server.ranges("f.bin")) == 2  # first try + one retry, which resumed


def test_connection_that_always_drops_gives_up_after_bounded_retries(server, tmp_path):
    url = server.add("f.bin", PAYLOAD, mode="drop_always")
    with pytest.raises(NetworkError, match="failed"):
        download_file(url, tmp_path / "f.bin", md5=PAYLOAD_MD5, retries=2, **FAST)
    # Each cut still delivers half of what was asked, so progress is made for a while; the
    # attempts are bounded either way.
    assert 2 <= len(server.ranges("f.bin")) <= 60


def test_wrong_md5_leaves_nothing(server, tmp_path):
    url = server.add("f.bin", PAYLOAD)
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        download_file(url, tmp_path / "f.bin", md5="0" * 32, **FAST)
    assert sorted(tmp_path.iterdir()) == []


def test_wrong_announced_size_fails_before_the_body(server, tmp_path):
    url = server.add("f.bin", PAYLOAD)
    with pytest.raises(ChecksumError, match="expected 1,000"):
        download_file(url, tmp_path / "f.bin", size=1000, **FAST)
    assert not (tmp_path / "f.bin").exists()


def test_unreachable_host_fails_fast_without_retries(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/f.bin"
    start = time.monotonic()
    with pytest.raises(NetworkError, match="connection refused"):
        download_file(url, tmp_path / "f.bin", md5=PAYLOAD_MD5, retries=5, backoff=10.0, progress=False)
    assert time.monotonic() - start < 3  # a single backoff sleep would already take 10 s
    assert not (tmp_path / "f.bin").exists()


def test_blocked_external_host_fails_fast(tmp_path):
    # DNS fails or conftest blocks the socket: either way one quick, clear error.
    start = time.monotonic()
    with pytest.raises(NetworkError, match="cannot reach www.cs.toronto.edu"):
        download_file("https://www.cs.toronto.edu/~kriz/none.tar.gz", tmp_path / "x", retries=5, backoff=10.0,
                      progress=False)
    assert time.monotonic() - start < 15


def test_http_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download_file(server.url("missing.bin"), tmp_path / "m.bin", **FAST)


def test_existing_verified_file_needs_no_network(tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(PAYLOAD)
    url = f"http://127.0.0.1:{closed_port()}/f.bin"
    assert download_file(url, dest, md5=PAYLOAD_MD5, size=len(PAYLOAD), **FAST) == dest
    dest.write_bytes(PAYLOAD[:-1] + b"x")  # same size, other bytes: refused, not overwritten
    with pytest.raises(ChecksumError):
        download_file(url, dest, md5=PAYLOAD_MD5, **FAST)
    assert dest.read_bytes()[-1:] == b"x"


def test_redirects_followed_but_never_downgraded(server, tmp_path):
    server.add("real.bin", PAYLOAD)
    url = server.add("moved.bin", b"", mode="redirect:/real.bin")
    download_file(url, tmp_path / "f.bin", md5=PAYLOAD_MD5, **FAST)
    assert md5sum(tmp_path / "f.bin") == PAYLOAD_MD5
    assert next_redirect_url("https://a.org/x", "https://b.org/y") == "https://b.org/y"
    assert next_redirect_url("http://a.org/x", "/y") == "http://a.org/y"
    with pytest.raises(DownloadError, match="https to plain http"):
        next_redirect_url("https://a.org/x", "http://a.org/x")
    with pytest.raises(DownloadError):
        next_redirect_url("https://a.org/x", "ftp://a.org/x")


def test_non_http_url_refused(tmp_path):
    with pytest.raises(DownloadError, match="unsupported URL"):
        download_file("file:///etc/passwd", tmp_path / "x")


def test_md5sum_matches_hashlib(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(PAYLOAD)
    assert md5sum(path, chunk_bytes=1000) == hashlib.md5(path.read_bytes()).hexdigest()


def test_complete_part_file_is_finished_without_refetching(server, tmp_path):
    url = server.add("f.bin", PAYLOAD)
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)  # a run killed between download and rename
    download_file(url, tmp_path / "f.bin", md5=PAYLOAD_MD5, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()
    assert server.ranges("f.bin") == [f"bytes={len(PAYLOAD)}-"]  # answered 416: nothing left to send
