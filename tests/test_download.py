"""engine.models.download against a real loopback HTTP server that can misbehave on demand.

The payload is a real torch checkpoint, so a test proves that the bytes on disk load back into the same tensors,
not only that a hash matches.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from engine.models.download import DownloadCancelled, DownloadError, DownloadResult, download_file, sha256_file

TIMEOUT = 5.0  # per connect / per read; every test finishes in well under a second when things work
MAX_REQUESTS = 20  # a client stuck in a retry loop gets 503s instead of hanging the suite
FILE_PATH = "/weights/dinov2_vits14_pretrain.pth"


@dataclass
class ServerState:
    """What the handler serves and how it misbehaves; tests flip these fields between downloads."""

    payload: bytes
    ignore_range: bool = False  # always 200 with the whole body
    cut_after: int | None = None  # announce the full Content-Length, send this many body bytes, close (FIN)
    reset_after: int | None = None  # like cut_after but with an abortive close (RST)
    not_found: bool = False
    overstate_length: int = 0  # send the whole body but claim this many extra bytes in Content-Length
    no_length: bool = False  # no Content-Length: the body ends when the connection closes
    stall_after: int | None = None  # send this many body bytes, then go silent until `release` is set
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[dict[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ranges(self) -> list[str | None]:
        with self.lock:
            return [r["range"] for r in self.requests]


def _make_handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = TIMEOUT  # a client that stops reading cannot pin a server thread forever

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append(
                    {"path": self.path, "range": self.headers.get("Range"), "ua": self.headers.get("User-Agent")}
                )
                n_requests = len(state.requests)
            if n_requests > MAX_REQUESTS:
                self.send_error(503, "too many requests in one test")
                return
            if state.not_found or self.path != FILE_PATH:
                self.send_error(404)
                return

            data = state.payload
            size = len(data)
            start = 0
            status = 200
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            if m and not state.ignore_range:
                start = int(m.group(1))
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                data = data[start : end + 1]
                status = 206

            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{size}")
            if not state.no_length:
                self.send_header("Content-Length", str(len(data) + state.overstate_length))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()

            if state.cut_after is not None:
                self.wfile.write(data[: state.cut_after])
                self.close_connection = True
                return
            if state.stall_after is not None:
                self.wfile.write(data[: state.stall_after])
                self.wfile.flush()
                state.release.wait(TIMEOUT)
                self.close_connection = True
                return
            if state.reset_after is not None:
                self.wfile.write(data[: state.reset_after])
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            self.wfile.write(data)

    return Handler


@pytest.fixture(scope="module")
def checkpoint() -> tuple[bytes, dict[str, torch.Tensor]]:
    """A few hundred KB of real torch.save output."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "pos_embed": torch.randn(1, 257, 96, generator=g),
        "blocks.0.attn.qkv.weight": torch.randn(288, 288, generator=g),
        "blocks.0.attn.qkv.bias": torch.randn(288, generator=g),
        "norm.weight": torch.ones(96),
        "steps": torch.arange(10, dtype=torch.int64),
    }
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue(), tensors


@pytest.fixture
def server(
    checkpoint: tuple[bytes, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, ServerState]]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    state = ServerState(payload=checkpoint[0])
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}{FILE_PATH}", state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _dest(tmp_path: Path) -> Path:
    return tmp_path / "models" / "dinov2_vits14_pretrain.pth"


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _assert_good(result: DownloadResult, dest: Path, checkpoint: tuple[bytes, dict[str, torch.Tensor]]) -> None:
    payload, tensors = checkpoint
    assert result.path == dest
    assert dest.read_bytes() == payload
    assert result.size == len(payload)
    assert result.sha256 == hashlib.sha256(payload).hexdigest() == sha256_file(dest)
    assert not _part(dest).exists()
    loaded = torch.load(dest, map_location="cpu", weights_only=True)
    assert loaded.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v), k


def test_plain_download(server, tmp_path, checkpoint):
    url, state = server
    payload = checkpoint[0]
    assert len(payload) > 100_000
    dest = _dest(tmp_path)
    calls: list[tuple[int, int | None]] = []

    result = download_file(url, dest, progress=lambda p: calls.append((p.done, p.total)), timeout=TIMEOUT,
                           chunk_size=1 << 15)

    _assert_good(result, dest, checkpoint)
    assert result.resumed is False
    assert calls[0] == (0, len(payload))
    assert calls[-1] == (len(payload), len(payload))
    assert len(calls) > 3
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert all(t == len(payload) for _, t in calls)
    assert state.ranges() == [None]
    assert state.requests[0]["ua"] is not None and "dinoscope" in state.requests[0]["ua"]


def test_interrupted_then_resumed(server, tmp_path, checkpoint):
    url, state = server
    payload = checkpoint[0]
    dest = _dest(tmp_path)
    cut = int(len(payload) * 0.4)
    state.cut_after = cut

    with pytest.raises(DownloadError, match="resume") as excinfo:
        download_file(url, dest, timeout=TIMEOUT, chunk_size=1 << 15)
    assert url in str(excinfo.value) and str(dest) in str(excinfo.value)
    assert f"got {cut} of {len(payload)} bytes" in str(excinfo.value)
    assert not dest.exists()
    assert _part(dest).read_bytes() == payload[:cut]

    state.cut_after = None
    calls: list[tuple[int, int | None]] = []
    result = download_file(url, dest, progress=lambda p: calls.append((p.done, p.total)), timeout=TIMEOUT)

    assert state.ranges() == [None, f"bytes={cut}-"]
    assert result.resumed is True
    assert calls[0] == (cut, len(payload))
    assert calls[-1] == (len(payload), len(payload))
    _assert_good(result, dest, checkpoint)


def test_connection_reset_keeps_part_and_resumes(server, tmp_path, checkpoint):
    url, state = server
    payload = checkpoint[0]
    dest = _dest(tmp_path)
    state.reset_after = len(payload) // 2

    with pytest.raises(DownloadError, match="resume"):
        download_file(url, dest, timeout=TIMEOUT, chunk_size=1 << 14)
    assert not dest.exists()
    kept = _part(dest).read_bytes()
    assert len(kept) <= len(payload) // 2
    assert kept == payload[: len(kept)]

    state.reset_after = None
    result = download_file(url, dest, timeout=TIMEOUT)
    _assert_good(result, dest, checkpoint)
    assert result.resumed is (len(kept) > 0)


def test_stalled_server_times_out_and_resumes(server, tmp_path, checkpoint):
    url, state = server
    dest = _dest(tmp_path)
    state.stall_after = 1 << 16

    with pytest.raises(DownloadError, match="resume") as excinfo:
        download_file(url, dest, timeout=0.5, chunk_size=1 << 14)
    assert "no answer within 0.5 s" in str(excinfo.value)
    assert _part(dest).read_bytes() == checkpoint[0][: 1 << 16]
    state.release.set()

    state.stall_after = None
    result = download_file(url, dest, timeout=TIMEOUT)
    assert state.ranges() == [None, f"bytes={1 << 16}-"]
    assert result.resumed is True
    _assert_good(result, dest, checkpoint)


def test_server_ignoring_range_restarts_cleanly(server, tmp_path, checkpoint):
    url, state = server
    dest = _dest(tmp_path)
    dest.parent.mkdir(parents=True)
    _part(dest).write_bytes(b"\xff" * 5000)  # garbage that must not survive into the result
    state.ignore_range = True

    result = download_file(url, dest, timeout=TIMEOUT)

    assert state.ranges() == ["bytes=5000-"]
    assert result.resumed is False
    _assert_good(result, dest, checkpoint)


def test_stale_part_larger_than_file_is_discarded(server, tmp_path, checkpoint):
    url, state = server
    payload = checkpoint[0]
    dest = _dest(tmp_path)
    dest.parent.mkdir(parents=True)
    _part(dest).write_bytes(payload + b"\x00" * 4096)

    result = download_file(url, dest, timeout=TIMEOUT)

    assert state.ranges() == [f"bytes={len(payload) + 4096}-", None]  # 416, then a fresh request
    assert result.resumed is False
    _assert_good(result, dest, checkpoint)


def test_http_404_names_url_and_destination(server, tmp_path):
    url, state = server
    state.not_found = True
    dest = _dest(tmp_path)

    with pytest.raises(DownloadError) as excinfo:
        download_file(url, dest, timeout=TIMEOUT)

    msg = str(excinfo.value)
    assert url in msg and str(dest) in msg and "404" in msg and "save it as" in msg
    assert not dest.exists() and not _part(dest).exists()
    assert list(dest.parent.iterdir()) == []


def test_unreachable_host_says_where_to_save(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/dinov2_vits14_pretrain.pth"
    dest = _dest(tmp_path)

    with pytest.raises(DownloadError) as excinfo:
        download_file(url, dest, timeout=3.0)

    msg = str(excinfo.value)
    assert url in msg and str(dest) in msg and "save it as" in msg
    assert not dest.exists() and not _part(dest).exists()


def test_cancel_keeps_part_and_later_call_resumes(server, tmp_path, checkpoint):
    url, state = server
    dest = _dest(tmp_path)
    chunk = 1 << 14
    polls = 0

    def cancel() -> bool:
        nonlocal polls
        polls += 1
        return polls > 1  # polled before each chunk: lets exactly one chunk through

    with pytest.raises(DownloadCancelled) as excinfo:
        download_file(url, dest, cancel=cancel, timeout=TIMEOUT, chunk_size=chunk)
    assert isinstance(excinfo.value, DownloadError)
    assert not dest.exists()
    assert _part(dest).read_bytes() == checkpoint[0][:chunk]

    result = download_file(url, dest, cancel=lambda: False, timeout=TIMEOUT)
    assert state.ranges() == [None, f"bytes={chunk}-"]
    assert result.resumed is True
    _assert_good(result, dest, checkpoint)


def test_body_shorter_than_content_length_then_good_server(server, tmp_path, checkpoint):
    url, state = server
    payload = checkpoint[0]
    dest = _dest(tmp_path)
    state.overstate_length = 1000  # the whole file, but announced as 1000 bytes longer

    with pytest.raises(DownloadError, match=f"got {len(payload)} of {len(payload) + 1000} bytes") as excinfo:
        download_file(url, dest, timeout=TIMEOUT)
    assert "resume" in str(excinfo.value)
    assert not dest.exists()
    assert _part(dest).read_bytes() == payload

    state.overstate_length = 0
    result = download_file(url, dest, timeout=TIMEOUT)
    # The kept part already holds every byte: the server answers 416, the part is dropped and fetched afresh.
    assert state.ranges() == [None, f"bytes={len(payload)}-", None]
    _assert_good(result, dest, checkpoint)


def test_unknown_length_reports_total_at_the_end(server, tmp_path, checkpoint):
    url, state = server
    payload = checkpoint[0]
    state.no_length = True
    calls: list[tuple[int, int | None]] = []

    result = download_file(
        url, _dest(tmp_path), progress=lambda p: calls.append((p.done, p.total)), timeout=TIMEOUT, chunk_size=1 << 15
    )

    _assert_good(result, _dest(tmp_path), checkpoint)
    assert calls[0] == (0, None)
    assert calls[-1] == (len(payload), len(payload))
