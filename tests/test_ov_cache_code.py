"""The compiled-model cache names the model code it was converted from, so an update that changes the backbone or
its conversion never finds the old graph (the OpenVINO side of it is in test_runtime_failures / test_runtime_quick).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from engine.runtime.ov_cache import CONVERSION_SOURCES, ENGINE, conversion_code


def engine_copy(tmp_path: Path) -> Path:
    root = tmp_path / "engine"
    shutil.copytree(ENGINE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_fingerprint_follows_the_model_code_and_nothing_else(tmp_path: Path) -> None:
    root = engine_copy(tmp_path)
    same = conversion_code(root)
    assert same == conversion_code(ENGINE)  # the bytes decide, not where the install lives

    (root / "store" / "library.py").write_text("# the store is not part of what a blob computes\n", "utf-8")
    (root / "models" / "zoo.py").write_text("# nor is the model list\n", "utf-8")
    assert conversion_code.__wrapped__(root) == same

    for rel, edit in [("models/layers/attention.py", lambda t: t.replace("scaled_dot_product_attention(q, k, v",
                                                                        "scaled_dot_product_attention(k, q, v")),
                      ("runtime/openvino_backend.py", lambda t: t + "\n# the wrapper changed\n"),
                      ("models/fuse.py", lambda t: t + " "),
                      ("models/vision_transformer.py", lambda t: t.replace("x_norm_clstoken", "x_norm_cls", 1))]:
        changed = engine_copy(tmp_path / rel.replace("/", "_"))
        f = changed / rel
        text = f.read_text("utf-8")
        assert edit(text) != text, rel
        f.write_text(edit(text), "utf-8")
        assert conversion_code.__wrapped__(changed) != same, rel

    added = engine_copy(tmp_path / "added")
    (added / "models" / "layers" / "rope.py").write_text("ROPE = True\n", "utf-8")  # a new layer file
    assert conversion_code.__wrapped__(added) != same


def test_every_source_it_names_exists() -> None:
    for rel in CONVERSION_SOURCES:
        assert (ENGINE / rel).exists(), rel


def test_without_sources_a_frozen_bundle_stands_for_its_code(tmp_path: Path) -> None:
    empty = tmp_path / "frozen"
    empty.mkdir()
    before = conversion_code.__wrapped__(empty)
    assert before == conversion_code.__wrapped__(empty) and before != conversion_code(ENGINE)
    exe = tmp_path / "dinoscope"  # a new build of the bundle: another executable
    shutil.copy(sys.executable, exe)
    old = sys.executable
    try:
        sys.executable = str(exe)
        assert conversion_code.__wrapped__(empty) != before
    finally:
        sys.executable = old
