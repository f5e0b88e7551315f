"""Resumable, atomic HTTP download of model weights.

Checkpoints are hundreds of megabytes and users are often on flaky or metered connections, so a download writes
to ``<dest>.part`` and resumes it with an HTTP ``Range`` request after a cut, a cancel or a crash; only a complete,
fsynced file is renamed to ``dest``, so a file under the final name is never a half download.  Every failure
raises :class:`DownloadError` with a message a user can act on: which URL to fetch and where to save it by hand
when this machine cannot reach it.

Standard library only, no global state: safe to call from a worker thread (but not twice at once for one
``dest``: both calls would write the same ``.part``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine.atomic import fsync_dir
from engine.progress import Cancelled, ProgressFn, Stopwatch

__all__ = ["DownloadCancelled", "DownloadError", "DownloadResult", "ProgressFn", "download_file", "sha256_file"]

USER_AGENT = "dinoscope"

# progress gets Progress(bytes done, bytes in all or None, phase "download"); bytes done include a resumed .part.

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class DownloadError(RuntimeError):
    """A download that did not produce the file; the message names the URL, the destination and the cause."""


class DownloadCancelled(DownloadError, Cancelled):
    """The caller's ``cancel()`` said stop; the .part is kept so the next call resumes instead of restarting."""


@dataclass(frozen=True)
class DownloadResult:
    """What was written, with a digest over the whole file so callers can verify it without reading it again."""

    path: Path
    size: int
    sha256: str
    resumed: bool


class _Restart(Exception):
    """Internal: the server cannot continue our .part (416, mismatched range); drop it and start from zero."""


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so multi-GB checkpoints do not have to fit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _manual_hint(url: str, dest: Path, reason: str) -> str:
    return (
        f"Cannot download {url} ({reason}).\n"
        f"If this machine is offline, fetch that URL on another machine and save it as:\n  {dest}"
    )


def _resume_hint(url: str, dest: Path, part: Path, what: str) -> str:
    return (
        f"Download of {url} to {dest} stopped: {what} — run the download again to resume "
        f"(the partial file {part} is kept)."
    )


def _describe_url_error(e: BaseException, timeout: float) -> str:
    """Turn urllib's nested reasons into a short phrase a user understands."""
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, OSError) and getattr(reason, "strerror", None):
        return str(reason.strerror)
    return str(reason) or type(reason).__name__


def _int_header(value: str | None) -> int | None:
    try:
        n = int(value) if value is not None else None
    except ValueError:
        return None
    return n if n is not None and n >= 0 else None


def _hash_existing(part: Path, h: hashlib._Hash, chunk_size: int) -> None:
    """The digest must cover the bytes from earlier attempts too, so they are read before appending."""
    with open(part, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
) -> DownloadResult:
    """Download ``url`` to ``dest`` so that an interrupted attempt costs only the bytes not yet fetched.

    ``timeout`` bounds the connect and every single read, so a stalled connection fails instead of hanging.
    ``progress`` is called once the response starts (with the resumed offset), after every chunk and at the end
    (at the end with ``total = done`` when the server announced no size).  ``cancel`` is polled between chunks.
    """
    dest = Path(dest)
    part = _part_path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"Cannot download {url}: cannot create the folder {dest.parent} ({e})") from e

    restarted = False
    while True:
        try:
            return _attempt(url, dest, part, progress, cancel, timeout, chunk_size)
        except _Restart:
            # One restart is enough: a second one means the server keeps contradicting itself.
            part.unlink(missing_ok=True)
            if restarted:
                raise DownloadError(
                    _manual_hint(url, dest, "the server refused to continue or restart the partial download")
                ) from None
            restarted = True


def _attempt(
    url: str,
    dest: Path,
    part: Path,
    progress: ProgressFn | None,
    cancel: Callable[[], bool] | None,
    timeout: float,
    chunk_size: int,
) -> DownloadResult:
    offset = part.stat().st_size if part.is_file() else 0
    clock = Stopwatch()
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset > 0:  # our .part is complete or longer than the file: cannot be continued
            raise _Restart from None
        raise DownloadError(_manual_hint(url, dest, f"HTTP {e.code} {e.reason}".rstrip())) from e
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise DownloadError(_manual_hint(url, dest, _describe_url_error(e, timeout))) from e

    with resp:
        total: int | None
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != offset:
                raise _Restart  # a range we did not ask for: safer to start over than to splice it in
            total = None if m.group(3) == "*" else int(m.group(3))
            if total is not None and offset > total:
                raise _Restart
        elif resp.status == 200:
            offset = 0  # the server ignored Range (or we sent none): the body is the whole file
            total = _int_header(resp.headers.get("Content-Length"))
        else:
            raise DownloadError(_manual_hint(url, dest, f"unexpected HTTP {resp.status} {resp.reason}".rstrip()))

        h = hashlib.sha256()
        try:
            if offset > 0:
                _hash_existing(part, h, chunk_size)
            f: BinaryIO = open(part, "ab" if offset > 0 else "wb")  # noqa: SIM115 - closed in the finally below
        except OSError as e:
            raise DownloadError(f"Cannot download {url}: cannot write {part} ({e})") from e

        done = offset
        try:
            if progress is not None:
                progress(clock(done, total, phase="download"))
            while True:
                if cancel is not None and cancel():
                    raise DownloadCancelled(
                        f"Download of {url} to {dest} was cancelled after {done} bytes; the partial file {part} "
                        "is kept and the next download resumes from it."
                    )
                try:
                    chunk = resp.read(chunk_size)
                except (http.client.IncompleteRead, http.client.HTTPException, OSError) as e:
                    reason = _describe_url_error(e, timeout)
                    raise DownloadError(
                        _resume_hint(url, dest, part, f"the connection broke after {done} bytes ({reason})")
                    ) from e
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as e:
                    raise DownloadError(f"Cannot download {url}: writing {part} failed ({e})") from e
                h.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(clock(done, total, phase="download"))
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise DownloadError(f"Cannot download {url}: writing {part} failed ({e})") from e
        finally:
            f.close()

    if total is not None and done != total:
        if done > total:
            part.unlink(missing_ok=True)
            raise DownloadError(
                _manual_hint(url, dest, f"the server sent {done} bytes but announced {total}; discarded")
            )
        raise DownloadError(_resume_hint(url, dest, part, f"got {done} of {total} bytes; the connection was cut"))

    if progress is not None:
        progress(clock(done, total if total is not None else done, phase="download"))
    try:
        os.replace(part, dest)
    except OSError as e:
        raise DownloadError(f"Cannot download {url}: cannot rename {part} to {dest} ({e})") from e
    fsync_dir(dest.parent)
    return DownloadResult(path=dest, size=done, sha256=h.hexdigest(), resumed=offset > 0)
