"""The indexing pipeline: scan, read each file once, decode in threads while the model runs, commit in batches.

Crash safety comes from two rules. (1) A file's row, thumbnail, embedding and region vectors are written in the
same transaction as the rest of its batch, so a kill leaves whole batches or nothing; there is no half-indexed
image. (2) What remains to do is recomputed from disk and database on every run ("files without a row, changed
files, and ok files without this model's embedding"), so running again after a kill simply finishes the job. The
vector files are rebuilt from the database at the end (or whenever they are found stale).

Each file's bytes are read once, in a decode thread: hashed (which is how a moved file is recognised, before any
decoding), decoded from memory, and turned into both the model input and the thumbnail from that single decode.

Why this file is long: the indexing pipeline (plan, decode workers, model batches, commits, move detection,
salvage after a kill) shares one run state, `_Run`, whose parts only make sense together.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image as PILImage
from sqlalchemy import delete, false, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError

from engine.imageio import ImageDecodeError, ImageInfo, load_rgb, read_info
from engine.progress import Cancelled, Progress, ProgressFn
from engine.store.library import Library, ModelRecord
from engine.store.regions import pool_regions
from engine.store.scan import (
    FolderScan,
    FoundFile,
    KnownImage,
    Plan,
    compare,
    content_hash,
    in_part,
    scan_dirs,
    scan_folders,
)
from engine.store.schema import Embedding, Image, Model, Region, StoreError, Thumbnail, utcnow
from engine.transforms import eval_transform

THUMBNAIL_SIZE = 256
THUMBNAIL_QUALITY = 85
RESIZE, CROP = 256, 224  # the official eval transform
MAX_FILE_BYTES = 2 * 2**30  # far above any photo (a 200 MP 16-bit TIFF is 1.2 GB); each file is read whole


@dataclass
class IndexReport:
    new: int = 0  # files seen for the first time (including those that failed)
    changed: int = 0  # files whose size or date changed
    moved: int = 0  # new paths recognised by content as a file the library had elsewhere: nothing recomputed
    deleted: int = 0  # rows removed because their file is gone
    unchanged: int = 0
    failed: int = 0  # files recorded as unreadable in this run
    seconds: float = 0.0
    files_per_s: float = 0.0
    embedded: int = 0  # unchanged files that only needed this model's vectors
    vanished: int = 0  # files that disappeared between the scan and their turn
    protected: int = 0  # rows kept although unseen, because their folder could not be read
    cancelled: bool = False
    model_id: int | None = None
    runtime: str = ""  # what embedded the photos: "openvino bf16", "torch int8", ...
    missing_folders: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    index_error: str | None = None  # the vector files could not be written (the database is complete)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of the files that failed now

    def summary(self) -> str:
        parts = [f"{self.new} new", f"{self.changed} changed", f"{self.moved} moved", f"{self.deleted} deleted",
                 f"{self.failed} failed", f"{self.unchanged} unchanged"]
        if self.embedded:
            parts.append(f"{self.embedded} embedded for this model")
        text = ", ".join(parts) + f" in {self.seconds:.1f} s ({self.files_per_s:.1f} files/s)"
        return text + (" (cancelled)" if self.cancelled else "")


# ------------------------------------------------------------------------------------------- model identity


def model_hash(model: torch.nn.Module) -> str:
    """blake2b over the weights (names, shapes, float32 values): the same weights give the same hash whether they
    came from a zoo download, a .pth, safetensors or a training checkpoint."""
    h = hashlib.blake2b(digest_size=32)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach()
        if t.is_floating_point():
            t = t.to(torch.float32)
        t = t.contiguous().cpu()
        h.update(name.encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().data if t.numel() else b"")
    return h.hexdigest()


def ensure_model(lib: Library, model: torch.nn.Module, name: str, digest: str | None = None) -> ModelRecord:
    """The library's row for these weights, created on first use (`digest`: model_hash(model), if known)."""
    digest = digest or model_hash(model)
    with lib.write_session.begin() as s:
        row = s.scalar(select(Model).where(Model.checkpoint_hash == digest))
        if row is None:
            row = Model(name=name, source=str(getattr(model, "source", name)), checkpoint_hash=digest,
                        dim=int(model.embed_dim), patch_size=int(model.patch_size))
            s.add(row)
            s.flush()
        return ModelRecord.of(row)


# --------------------------------------------------------------------------------------------- file -> inputs


def make_thumbnail(rgb: np.ndarray, full_size: tuple[int, int] | None = None) -> tuple[bytes, int, int]:
    """JPEG (q85) whose longest side is 256, from an already decoded image; never enlarges.

    `full_size` is the upright full-resolution (width, height): a reduced JPEG decode rounds its size up, so the
    aspect is taken from the original to avoid a 1-pixel skew.
    """
    height, width = rgb.shape[:2]
    full_w, full_h = full_size or (width, height)
    scale = THUMBNAIL_SIZE / max(full_w, full_h)
    image = PILImage.fromarray(rgb)
    if scale < 1:
        target = (max(1, round(full_w * scale)), max(1, round(full_h * scale)))
        image = image.resize(target, PILImage.Resampling.BICUBIC, reducing_gap=2.0)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=THUMBNAIL_QUALITY)
    return buf.getvalue(), image.width, image.height


class _NotRegular(OSError):
    pass


def read_file(path: str) -> bytes:
    """The whole file. Opened non-blocking and checked to be a regular file, so a FIFO named .jpg cannot hang us."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotRegular("not a regular file (a pipe, socket or device)")
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def _os_cause(exc: OSError) -> str:
    if isinstance(exc, _NotRegular):
        return str(exc)
    if isinstance(exc, PermissionError):
        return "permission denied (the file cannot be read)"
    if isinstance(exc, IsADirectoryError):
        return "this is a folder, not an image file"
    return f"the file cannot be read ({exc.strerror or exc})"


@dataclass
class _Job:
    kind: str  # 'new' | 'changed' | 'embed'
    file: FoundFile
    folder_id: int
    row: KnownImage | None = None


@dataclass
class _Prepared:
    job: _Job
    hash: str | None = None
    info: ImageInfo | None = None
    thumb: tuple[bytes, int, int] | None = None
    tensor: torch.Tensor | None = None
    error: str | None = None
    vanished: bool = False
    same_content: bool = False  # a 'changed' file whose bytes equal what was indexed (only its date changed)
    maybe_move: bool = False  # a new file with the content of a missing row: the main thread decides


def prepare(job: _Job, missing_hashes: frozenset[str] = frozenset()) -> _Prepared:
    """Runs in a decode thread: read once, hash, and decode only what is needed. Never raises for a bad file."""
    out = _Prepared(job)
    if job.file.problem:
        out.error = job.file.problem
        return out
    if job.file.size > MAX_FILE_BYTES:  # a video or disk image named .jpg must not be read into memory
        out.error = (f"the file is too large ({job.file.size / 2**30:.1f} GiB; image files are read up to "
                     f"{MAX_FILE_BYTES // 2**30} GiB)")
        return out
    try:
        data = read_file(job.file.path)
    except FileNotFoundError:
        out.vanished = True
        return out
    except OSError as exc:
        out.error = _os_cause(exc)
        return out
    except MemoryError:
        out.error = "there is not enough memory to read it"
        return out
    out.hash = content_hash(data)
    if not data:
        out.error = "the file is empty (0 bytes)"
        return out
    need_info = need_thumb = job.kind != "embed"  # an 'embed' job has both already, from an earlier model
    row = job.row
    if job.kind == "changed" and row is not None and out.hash == row.content_hash:
        out.same_content = True
        if row.status != "ok" or row.has_embedding:
            return out  # nothing to recompute: the bytes are what was indexed
        need_info = need_thumb = False  # only this model's vectors are missing
    elif job.kind == "new" and out.hash in missing_hashes:
        out.maybe_move = True
        return out
    try:
        if need_info:
            out.info = read_info(data)  # header only; refuses decompression bombs before decoding
        rgb = load_rgb(data, min_side=RESIZE)
        out.tensor = eval_transform(rgb, resize=RESIZE, crop=CROP)
        if need_thumb:
            full = (out.info.width, out.info.height) if out.info else None
            out.thumb = make_thumbnail(rgb, full)
    except ImageDecodeError as exc:
        out.error = exc.cause
    except Exception as exc:  # whatever else a hostile file provokes, it must not stop the run
        out.error = f"unexpected failure while decoding ({type(exc).__name__}: {exc})"
    return out


# ------------------------------------------------------------------------------------------------ DB writes


def _link_raws(lib: Library, links: list[tuple[int, str | None]]) -> None:
    """Record a RAW twin that appeared beside (or vanished from beside) an unchanged JPEG: no pixel is re-read."""
    if links:
        with lib.write_session.begin() as s:
            for row_id, raw_path in links:
                s.execute(update(Image).where(Image.id == row_id).values(raw_path=raw_path))


@dataclass
class _Write:
    """Everything one file changes in the database; a batch of these is one transaction."""

    row_id: int | None  # None: a new image row
    fields: dict
    drop_derived: bool = False  # the content changed: every model's vectors and the thumbnail are stale
    thumb: tuple[bytes, int, int] | None = None
    vector: np.ndarray | None = None
    regions: np.ndarray | None = None


def _image_fields(prep: _Prepared) -> dict:
    f = prep.job.file
    fields = {"path": f.path, "folder_id": prep.job.folder_id, "size": f.size, "mtime_ns": f.mtime_ns,
              "content_hash": prep.hash, "indexed_at": utcnow(), "raw_path": f.raw}
    info = prep.info
    if prep.error is None and info is not None:
        fields.update(width=info.width, height=info.height, orientation=info.orientation,
                      captured_at=info.captured_at, format=info.format, status="ok", error=None)
    else:
        fields.update(width=None, height=None, orientation=None, captured_at=None, format=None, status="error",
                      error=prep.error or "unknown error")
    return fields


class _Writer:
    def __init__(self, lib: Library, model_id: int) -> None:
        self.lib = lib
        self.model_id = model_id
        self.writes: list[_Write] = []
        self.committed = 0

    def add(self, write: _Write) -> None:
        self.writes.append(write)

    def flush(self) -> None:
        if not self.writes:
            return
        writes, self.writes = self.writes, []
        try:
            self._commit(writes)
        except OperationalError as exc:
            text = str(exc.orig) if exc.orig is not None else str(exc)
            kept = (f"the last {len(writes)} files were not saved; everything committed before them "
                    f"({self.committed} files in this run) is intact")
            if "full" in text:  # SQLITE_FULL: ENOSPC
                raise StoreError(f"disk full while writing the library database ({text}); {kept}. "
                                 "Free some space and index again.") from exc
            if "disk I/O" in text:  # SQLITE_IOERR: EFBIG (file size limit), EDQUOT, a failing drive
                raise StoreError(f"disk full or write error while writing the library database ({text}); {kept}. "
                                 "Check the free space and the drive, then index again.") from exc
            raise StoreError(f"cannot write the library database ({text}); {kept}") from exc
        self.committed += len(writes)

    def _commit(self, writes: list[_Write]) -> None:
        with self.lib.write_session.begin() as s:
            existing = [w for w in writes if w.row_id is not None]
            fresh = [w for w in writes if w.row_id is None]
            images = [Image(**w.fields) for w in fresh]
            s.add_all(images)
            s.flush()  # assigns the new ids (AUTOINCREMENT: never reused)
            for w, img in zip(fresh, images, strict=True):
                w.row_id = img.id
            for w in existing:
                if w.drop_derived:
                    s.execute(delete(Embedding).where(Embedding.image_id == w.row_id))  # regions cascade
                    s.execute(delete(Thumbnail).where(Thumbnail.image_id == w.row_id))
                if w.fields:
                    s.execute(update(Image).where(Image.id == w.row_id).values(**w.fields))
            thumbs = [{"image_id": w.row_id, "jpeg": w.thumb[0], "width": w.thumb[1], "height": w.thumb[2]}
                      for w in writes if w.thumb is not None]
            with_vectors = [w for w in writes if w.vector is not None]
            if thumbs:
                stmt = sqlite_insert(Thumbnail)
                s.execute(stmt.on_conflict_do_update(
                    index_elements=["image_id"],
                    set_={"jpeg": stmt.excluded.jpeg, "width": stmt.excluded.width, "height": stmt.excluded.height},
                ), thumbs)
            if with_vectors:
                vectors = [{"model_id": self.model_id, "image_id": w.row_id,
                            "vector": np.ascontiguousarray(w.vector, np.float32).tobytes()} for w in with_vectors]
                regions = [{"model_id": self.model_id, "image_id": w.row_id,
                            "data": np.ascontiguousarray(w.regions, np.float16).tobytes()} for w in with_vectors]
                stmt = sqlite_insert(Embedding)
                s.execute(stmt.on_conflict_do_update(index_elements=["model_id", "image_id"],
                                                     set_={"vector": stmt.excluded.vector}), vectors)
                stmt = sqlite_insert(Region)
                s.execute(stmt.on_conflict_do_update(index_elements=["model_id", "image_id"],
                                                     set_={"data": stmt.excluded.data}), regions)


# ---------------------------------------------------------------------------------------------- the pipeline


def _known_images(lib: Library, folder_ids: list[int], model_id: int,
                  only: list[tuple[str, bool]] | None = None) -> list[KnownImage]:
    """The rows of these folders; with `only` (a watcher's partial run), just those in the given parts."""
    q = select(Image.id, Image.path, Image.folder_id, Image.size, Image.mtime_ns, Image.content_hash,
               Image.status, Image.raw_path).where(Image.folder_id.in_(folder_ids))
    if only is not None and len(only) <= 64:  # path ranges use the path index; past 64 parts filter in Python
        q = q.where(or_(false(), *[Image.path.between(d + os.sep, d + chr(ord(os.sep) + 1)) for d, _ in only]))
    with lib.session() as s:
        rows = s.execute(q).all()
        if only is not None:
            rows = [r for r in rows if any(in_part(r[1], d, deep) for d, deep in only)]
        ids = [r[0] for r in rows]
        has_model = select(Embedding.image_id).where(Embedding.model_id == model_id)
        if only is None:  # a full run: one scan of this model's rows
            embedded = set(s.scalars(has_model))
        else:
            embedded = {i for start in range(0, len(ids), 500)
                        for i in s.scalars(has_model.where(Embedding.image_id.in_(ids[start : start + 500])))}
    return [KnownImage(*r[:7], has_embedding=r[0] in embedded, raw_path=r[7]) for r in rows]


def _load_model(model: torch.nn.Module | str | os.PathLike) -> tuple[torch.nn.Module, str]:
    if isinstance(model, torch.nn.Module):
        return model, str(getattr(model, "source", type(model).__name__))
    from engine.models import load_backbone

    return load_backbone(model, device="cpu"), os.fspath(model)


def index_library(
    lib: Library,
    model_source_or_model: torch.nn.Module | str | os.PathLike,
    *,
    folders: Iterable[str | os.PathLike] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    commit_every: int = 256,
    workers: int | None = None,
    model_name: str | None = None,
    backend: str = "auto",
    only: list[tuple[str, bool]] | None = None,
) -> IndexReport:
    """Bring the library up to date with its folders (or add `folders` first and index only those) for one model.

    Holds the library lock for the whole run (LibraryBusyError if another process indexes it). Unreadable files
    become 'error' rows and never stop the run. `cancel()` is checked between batches: the run then commits what
    is done, updates the vector files and returns with `cancelled=True`; nothing is deleted in a cancelled run,
    since an unseen "missing" file may yet turn up moved. `only` limits the run to some (folder, recursive)
    parts of the library's folders: what a folder watcher saw change.
    """
    from engine.extract import Extractor

    if commit_every < 1:
        raise ValueError(f"commit_every must be at least 1, got {commit_every}")
    start = time.perf_counter()
    report = IndexReport()
    with lib.lock("index"):
        # Model, device and precision are checked first: a bad one must leave the library as it was.
        backbone, source = _load_model(model_source_or_model)
        digest = model_hash(backbone)
        extractor = Extractor(backbone, device=device, precision=precision, batch_size=batch_size,
                              workers=workers, patch_tokens=True, backend=backend)
        if folders is not None:
            roots = []
            for f in folders:
                rec = lib.add_folder(f)
                if all(r.id != rec.id for r in roots):
                    roots.append(rec)
        else:
            roots = lib.folders()
        model = ensure_model(lib, backbone, model_name or source, digest)
        report.model_id = model.id
        report.runtime = f"{extractor.backend} {extractor.precision}"

        # ---- scan
        found = [0]

        def on_file(n: int) -> None:
            found[0] += n
            if found[0] % 256 == 0:
                if cancel is not None and cancel():
                    raise Cancelled()
                if progress is not None:
                    progress(Progress(found[0], None, phase="scan"))

        if progress is not None:
            progress(Progress(0, None, phase="scan"))
        try:
            if cancel is not None and cancel():  # cancelled while the model loaded (ViT-L: tens of seconds)
                raise Cancelled()
            if only is None:
                scans = scan_folders([r.path for r in roots], on_file)
            else:
                scans = [scan_dirs(r.path, only) for r in roots]
        except Cancelled:
            report.cancelled = True
            report.seconds = time.perf_counter() - start
            return report
        pairs: list[tuple[FolderScan, int]] = list(zip(scans, (r.id for r in roots), strict=True))
        for scan in scans:
            if not scan.exists:
                report.missing_folders.append(scan.root)
                report.warnings.append(f"{scan.root}: folder not found (unmounted drive?); its images are kept")
            for folder, reason in scan.unreadable:
                report.warnings.append(f"{folder}: skipped ({reason}); its images are kept")
        if progress is not None:
            progress(Progress(found[0], found[0], phase="scan"))
        plan = compare(pairs, _known_images(lib, [r.id for r in roots], model.id,
                                            None if only is None else [p for s in scans for p in s.only or []]))
        report.unchanged, report.protected = plan.unchanged, plan.protected

        run = _Run(lib, model, plan, extractor, report, progress, cancel, commit_every)
        try:
            run.execute()
        except BaseException:
            run.salvage()  # Ctrl-C or an unexpected error: keep what was already computed
            raise
        if not report.cancelled:
            report.deleted = run.delete_missing(pairs)
        _link_raws(lib, plan.raw_links)

        # ---- vectors: rebuild every model whose rows changed (changed files dropped other models' vectors too)
        from engine.store.vectors import VectorIndex

        models = lib.models()
        for done, m in enumerate(models):
            if progress is not None:
                progress(Progress(done, len(models), report.failed, phase="index"))
            try:
                VectorIndex.open(lib, m.id)
            except StoreError as exc:
                report.index_error = str(exc)
                report.warnings.append(str(exc))
                break
        if progress is not None:
            progress(Progress(len(models), len(models), report.failed, phase="index"))
    report.seconds = time.perf_counter() - start
    report.files_per_s = run.rate()
    return report


class _Run:
    """One pass of the embed phase; kept as an object so the pieces share the counters without globals."""

    def __init__(self, lib, model, plan: Plan, extractor, report: IndexReport, progress, cancel, commit_every):
        self.lib = lib
        self.model = model
        self.plan = plan
        self.extractor = extractor
        self.report = report
        self.progress = progress
        self.cancel = cancel
        self.commit_every = commit_every
        self.writer = _Writer(lib, model.id)
        self.failed_write = False
        self.jobs = sorted(
            [_Job("new", f, folder_id) for f, folder_id in plan.new]
            + [_Job("changed", f, row.folder_id, row) for f, row in plan.changed]
            + [_Job("embed", f, row.folder_id, row) for f, row in plan.embed],
            key=lambda j: j.file.path,
        )
        self.missing_by_hash: dict[str, list[KnownImage]] = {}
        for row in sorted(plan.missing, key=lambda r: r.id):
            if row.content_hash:
                self.missing_by_hash.setdefault(row.content_hash, []).append(row)
        self.missing_hashes = frozenset(self.missing_by_hash)
        self.claimed: set[int] = set()
        self.vanished_rows: list[KnownImage] = []
        self.done = 0
        self.t0 = time.perf_counter()
        self.t1: float | None = None
        self.current: str | None = None

    # ---------------------------------------------------------------------------------------------- progress
    def _emit(self) -> None:
        if self.progress is None:
            return
        self.progress(Progress(self.done, len(self.jobs), self.report.failed, time.perf_counter() - self.t0,
                               phase="embed", current=self.current))

    def rate(self) -> float:
        """Files through the read-decode-embed-commit pipeline per second (scan and index writing excluded)."""
        elapsed = (self.t1 or time.perf_counter()) - self.t0
        return self.done / elapsed if elapsed > 0 and self.done else 0.0

    def _cancelled(self) -> bool:
        return self.cancel is not None and bool(self.cancel())

    # --------------------------------------------------------------------------------------------- main loop
    def execute(self) -> None:
        batch: list[tuple[_Prepared, _Write]] = []
        lookahead = max(self.extractor.batch_size * 3, self.extractor.workers * 2)
        stop = threading.Event()

        def task(job: _Job) -> _Prepared:
            if stop.is_set():
                raise Cancelled()
            return prepare(job, self.missing_hashes)

        pool = ThreadPoolExecutor(max_workers=self.extractor.workers, thread_name_prefix="index-decode")
        pending: deque[Future] = deque()
        next_job = 0
        since_check = 0
        try:
            while True:
                while next_job < len(self.jobs) and len(pending) < lookahead:
                    pending.append(pool.submit(task, self.jobs[next_job]))
                    next_job += 1
                if not pending:
                    break
                prep = pending.popleft().result()
                self.current = prep.job.file.path
                item = self._handle(prep)
                if item is not None:
                    batch.append(item)
                else:
                    self.done += 1
                if len(batch) >= self.extractor.batch_size:
                    self._embed(batch)
                    batch = []
                    since_check = 0
                    if self._cancelled():
                        self.report.cancelled = True
                        break
                else:
                    since_check += 1
                    if since_check >= self.extractor.batch_size:
                        since_check = 0
                        self._emit()
                        if self._cancelled():
                            self.report.cancelled = True
                            break
                if len(self.writer.writes) >= self.commit_every:
                    self._flush()
            if batch and not self.report.cancelled:
                self._embed(batch)
            self._flush()  # a cancelled run keeps everything finished so far
            if self.jobs:
                self._emit()
        finally:
            self.t1 = time.perf_counter()
            stop.set()
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _flush(self) -> None:
        try:
            self.writer.flush()
        except StoreError:
            self.failed_write = True
            raise

    def salvage(self) -> None:
        """Commit the finished files after an interruption, unless it was the database write that failed."""
        if not self.failed_write:
            with contextlib.suppress(StoreError):
                self.writer.flush()

    def _embed(self, batch: list[tuple[_Prepared, _Write]]) -> None:
        out = self.extractor.embed_tensor(torch.stack([p.tensor for p, _ in batch]))
        assert out.patch is not None
        side = CROP // self.extractor.patch_size
        regions = pool_regions(out.patch, (side, side))
        for i, (prep, write) in enumerate(batch):
            write.vector = out.cls[i]
            write.regions = regions[i]
            prep.tensor = None
            self.writer.add(write)
        self.done += len(batch)
        self._emit()

    def _handle(self, prep: _Prepared) -> tuple[_Prepared, _Write] | None:
        """Turn a decode result into a database write; returns it when it still needs the model."""
        job, report = prep.job, self.report
        if prep.vanished:
            report.vanished += 1
            if job.row is not None:
                self.vanished_rows.append(job.row)
            return None
        if prep.maybe_move:
            candidates = self.missing_by_hash.get(prep.hash or "", [])
            if candidates:
                return self._move(prep, candidates.pop(0))
            prep = prepare(job)  # its twin was already claimed by another copy: a genuinely new file
            if prep.vanished:
                report.vanished += 1
                return None
        report.new += int(job.kind == "new")
        report.changed += int(job.kind == "changed")
        report.embedded += int(job.kind == "embed")
        if prep.error is not None:
            report.failed += 1
            report.errors.append((job.file.path, prep.error))
            # A known file that now fails: its thumbnail and every model's vectors describe bytes it no longer has.
            self.writer.add(_Write(job.row.id if job.row else None, _image_fields(prep),
                                   drop_derived=job.row is not None))
            return None
        if job.kind == "embed":
            return prep, _Write(job.row.id, {"indexed_at": utcnow()})
        if prep.same_content:
            write = _Write(job.row.id, {"size": job.file.size, "mtime_ns": job.file.mtime_ns})
            if prep.tensor is None:
                self.writer.add(write)
                return None
            return prep, write
        write = _Write(job.row.id if job.row else None, _image_fields(prep), drop_derived=job.kind == "changed",
                       thumb=prep.thumb)
        return prep, write

    def _move(self, prep: _Prepared, row: KnownImage) -> tuple[_Prepared, _Write] | None:
        """Same bytes as a row whose file is gone: re-point that row, keeping its id, vectors, thumbnail, labels."""
        self.claimed.add(row.id)
        self.report.moved += 1
        f = prep.job.file
        write = _Write(row.id, {"path": f.path, "folder_id": prep.job.folder_id, "size": f.size,
                                "mtime_ns": f.mtime_ns, "raw_path": f.raw})
        if row.status == "ok" and not row.has_embedding:  # moved and, until now, never seen by this model
            again = prepare(_Job("embed", f, prep.job.folder_id, row))
            if again.tensor is not None:
                return again, write
        self.writer.add(write)
        return None

    # ------------------------------------------------------------------------------------------------ deletes
    def delete_missing(self, pairs: list[tuple[FolderScan, int]]) -> int:
        """Remove rows whose files are gone, but only where the folder was fully seen (and still is)."""
        doomed = [r.id for r in self.plan.missing if r.id not in self.claimed]
        roots = {folder_id: scan.root for scan, folder_id in pairs}
        for row in self.vanished_rows:  # disappeared during this run: gone if its source folder is still there
            root = roots.get(row.folder_id)
            if root and os.path.isdir(root) and not os.path.lexists(row.path):
                doomed.append(row.id)
        if not doomed:
            return 0
        with self.lib.write_session.begin() as s:
            for start in range(0, len(doomed), 500):
                s.execute(delete(Image).where(Image.id.in_(doomed[start : start + 500])))
        return len(doomed)


__all__ = [
    "IndexReport",
    "ensure_model",
    "index_library",
    "make_thumbnail",
    "model_hash",
    "prepare",
    "read_file",
]

