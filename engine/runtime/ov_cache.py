"""The compiled OpenVINO model on disk, so that the second start costs no conversion and no compilation.

One file per (weights, input size, precision, device) under the data folder's cache, named from those; its header
records the OpenVINO version, a fingerprint of the model code that was converted (`conversion_code`) and a SHA-256
of the blob. A file that is truncated, corrupt, unreadable, made by another OpenVINO version or from other model
code (an updated Dinoscope) is never handed to OpenVINO: `load` says why in one line and the caller rebuilds it.
Files are written atomically (temp file, fsync, rename), so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.atomic import atomic_write

MAGIC = b"DINOSCOPE-OV1\n"
_LEN = struct.Struct("<I")

ENGINE = Path(__file__).resolve().parents[1]
# What a blob computes is decided by these sources (relative to engine/; a folder means its .py files): the
# backbone and its layers, the config, the layer-scale fold, the fixed-size wrapper that is converted and the int8
# recipe. Weights alone do not identify a blob: an update that changes any of these must not find the old graph in
# the cache.
CONVERSION_SOURCES = ("models/vision_transformer.py", "models/config.py", "models/fuse.py", "models/layers",
                      "runtime/openvino_backend.py", "runtime/ov_int8.py")


class CacheInvalid(ValueError):
    """The cache file cannot be used; the message says why (for the one logged line)."""


@dataclass(frozen=True)
class CacheKey:
    weights: str  # hash of the folded backbone's weights
    input_size: int
    precision: str  # OpenVINO inference precision ("f32", "bf16"), or "int8-<float precision>-<calibration>"
    device: str  # OpenVINO device, with its full name (a blob is compiled for one CPU/GPU)
    ov_version: str
    code: str  # `conversion_code()` when it was converted

    def filename(self) -> str:
        """Everything but the OpenVINO version and the code: an update finds the old file and replaces it."""
        dev = hashlib.blake2b(self.device.encode(), digest_size=4).hexdigest()
        return f"{self.weights[:24]}-{self.input_size}px-{self.precision}-{dev}.ovblob"

    def header(self, payload: bytes) -> dict:
        return {"weights": self.weights, "input_size": self.input_size, "precision": self.precision,
                "device": self.device, "openvino": self.ov_version, "code": self.code, "bytes": len(payload),
                "sha256": hashlib.sha256(payload).hexdigest()}


@functools.lru_cache(maxsize=4)
def conversion_code(root: Path = ENGINE) -> str:
    """A fingerprint of the model code a blob was converted from (`CONVERSION_SOURCES` under `root`), read as
    bytes so that it needs no torch (the quick start checks it too). Any edit, a comment included, rebuilds the
    cache once. A frozen bundle ships no sources: its executable's size and date stand for its code."""
    h = hashlib.blake2b(digest_size=12)
    found = False
    for rel in CONVERSION_SOURCES:
        where = root / rel
        for file in sorted(where.glob("*.py")) if where.is_dir() else [where]:
            try:
                data = file.read_bytes()
            except OSError:
                continue
            found = True
            h.update(file.relative_to(root).as_posix().encode() + b"\0" + data + b"\0")
    if not found:
        try:
            st = os.stat(sys.executable)
            h.update(f"frozen {st.st_size} {st.st_mtime_ns}".encode())
        except OSError:
            h.update(b"unknown")
    return h.hexdigest()


def cache_folder() -> Path:
    from engine.data_home import cache_dir

    return cache_dir() / "openvino"


def load(path: Path, key: CacheKey) -> bytes | None:
    """The compiled blob stored for `key`, None when there is no file, CacheInvalid when it cannot be used."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CacheInvalid(f"unreadable ({e})") from e
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LEN.size:
        raise CacheInvalid("not a Dinoscope compiled-model file (or truncated)")
    start = len(MAGIC) + _LEN.size
    (hlen,) = _LEN.unpack_from(data, len(MAGIC))
    try:
        header = json.loads(data[start : start + hlen].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError) as e:
        raise CacheInvalid(f"corrupt header ({e})") from e
    if header.get("openvino") != key.ov_version:
        raise CacheInvalid(f"made by OpenVINO {header.get('openvino')}, this is {key.ov_version}")
    if header.get("code") != key.code:
        raise CacheInvalid("converted from other model code (Dinoscope was updated)")
    expected = key.header(b"")
    for field in ("weights", "input_size", "precision", "device"):
        if header.get(field) != expected[field]:
            raise CacheInvalid(f"made for another {field.replace('_', ' ')} ({header.get(field)})")
    payload = data[start + hlen :]
    if len(payload) != header.get("bytes"):
        raise CacheInvalid(f"truncated ({len(payload)} of {header.get('bytes')} bytes)")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CacheInvalid("corrupt (checksum mismatch)")
    return payload


def save(path: Path, key: CacheKey, payload: bytes) -> Path:
    head = json.dumps(key.header(payload)).encode("utf-8")

    def write(f) -> None:
        f.write(MAGIC)
        f.write(_LEN.pack(len(head)))
        f.write(head)
        f.write(payload)

    return atomic_write(path, write)
