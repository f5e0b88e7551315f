"""The minor failures of issue 15.8: CSV formula injection in label export, names with newlines in command output,
absurd first progress rates."""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from app.progress import MIN_RATE_SECONDS, ProgressBar
from engine import labels as L
from engine.store import Library, index_library
from tests.test_indexer import model


@pytest.fixture
def odd_library(tmp_path: Path):
    """A library whose photo names and labels are hostile: a newline, a formula, a non-UTF-8 byte."""
    src = tmp_path / "photos"
    src.mkdir()
    names = ["=SUM(A1).jpg", "two\nlines.jpg", os.fsdecode(b"caf\xe9.jpg")]
    for i, name in enumerate(names):
        Image.new("RGB", (64, 48), (40 * i, 100, 200 - 40 * i)).save(src / name, format="JPEG")
    lib = Library.open("odd")
    index_library(lib, model(), folders=[src], precision="fp32")
    yield lib, src, names
    lib.close()


def test_csv_export_defuses_formulas_and_keeps_exact_names(odd_library, tmp_path: Path) -> None:
    lib, src, _ = odd_library
    hostile = {"=HYPERLINK(\"http://evil\",\"x\")": True, "+SUM(A1)": True, "-2+3": True, "@cmd": True,
               "cat": False}
    ids = [i for i, _ in lib.image_paths()]
    for label in hostile:
        L.tag(lib, ids, label)
    out = L.export(lib, tmp_path / "labels.csv")
    raw = out.read_bytes()
    assert os.fsencode(str(src)) + b"/caf\xe9.jpg" in raw  # the exact bytes: the exported path opens the photo
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8", "surrogateescape"), newline="")))
    assert len(rows) == len(ids) * len(hostile)
    assert {r["label"] for r in rows} == {("'" + label) if defused else label for label, defused in hostile.items()}
    assert {r["path"] for r in rows} == {p for _, p in lib.image_paths()}  # paths start with /: left as they are
    assert any(r["path"].endswith("two\nlines.jpg") for r in rows)  # quoted by csv, not mangled


def test_the_cli_prints_a_name_with_a_newline_on_one_line(odd_library, dinoscope_home: Path) -> None:
    from tests.test_indexer import run_cli

    r = run_cli("index", "--errors", "--library", "odd", home=dinoscope_home)  # sanity: the library opens
    assert r.returncode == 0
    r = run_cli("cluster", "--library", "odd", "--k", "3", home=dinoscope_home)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.endswith("two\\nlines.jpg") for line in lines)  # escaped, on its row
    assert not any(line == "lines.jpg" or line.endswith("two") for line in lines)
    assert any(line.endswith("caf\ufffd.jpg") for line in lines)


def shown_rate(text: str) -> float | None:
    match = re.search(r"([\d.]+) img/s", text)
    return float(match[1]) if match else None


def test_the_first_progress_update_shows_no_absurd_rate() -> None:
    stream = io.StringIO()
    bar = ProgressBar("indexing", stream=stream)
    bar.update(5, 100, force=True)  # right after the start: 5 images "in" a few microseconds
    rate = shown_rate(stream.getvalue())
    assert rate is None or rate <= 5 / MIN_RATE_SECONDS  # never more than the work could have done in that time
    if rate is None:
        assert "-- img/s" in stream.getvalue() and "ETA --:--" in stream.getvalue()
    bar.start -= 10  # ten seconds later, the rate is the real one
    bar.update(50, 100, force=True)
    later = shown_rate(stream.getvalue().splitlines()[-1])
    assert later is not None and 0 < later <= 5.0
