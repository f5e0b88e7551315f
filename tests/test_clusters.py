"""k-means clusters stored in a real library: recovered groups, sizes, representatives, replacement, reloading."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engine import clusters as cl
from engine.store import Library, StoreError
from engine.store.schema import Embedding, Folder, Image, Model


def add_clustered(lib: Library, groups: int, per_group: int, dim: int = 32, seed: int = 0):
    """A model whose stored vectors form `groups` tight, well separated groups; returns (model id, ids, truth)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim))
    truth = np.repeat(np.arange(groups), per_group)
    rng.shuffle(truth)
    x = centres[truth] + 0.1 * rng.standard_normal((len(truth), dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    with lib.session.begin() as s:
        folder = Folder(path="/photos")
        s.add(folder)
        s.flush()
        images = [Image(folder_id=folder.id, path=f"/photos/{i}.jpg", size=1, mtime_ns=1, status="ok")
                  for i in range(len(truth))]
        s.add_all(images)
        model = Model(name="m", source="m", checkpoint_hash=f"m{seed}", dim=dim, patch_size=14)
        s.add(model)
        s.flush()
        s.add_all(Embedding(model_id=model.id, image_id=img.id, vector=x[i].tobytes())
                  for i, img in enumerate(images))
        ids = np.array([img.id for img in images], np.int64)
    return model.id, ids, truth, x


def stored_rows(lib: Library) -> int:
    with sqlite3.connect(lib.db_path) as con:
        return con.execute("SELECT count(*) FROM clusters").fetchone()[0]


def test_clusters_recover_separated_groups_and_are_stored(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        model_id, ids, truth, x = add_clustered(lib, groups=5, per_group=30)
        result = cl.cluster_library(lib, model_id, k=5, seed=1)
        assert np.array_equal(result.image_ids, np.sort(ids))
        order = np.argsort(ids)
        labels_by_truth = {}
        for t, label in zip(truth[order], result.labels, strict=True):
            labels_by_truth.setdefault(int(t), set()).add(int(label))
        assert all(len(v) == 1 for v in labels_by_truth.values())  # each true group is exactly one cluster
        assert len({next(iter(v)) for v in labels_by_truth.values()}) == 5
        assert result.sizes.sum() == len(ids) and (np.diff(result.sizes) <= 0).all()
        np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-5)

        # The representative is the member closest to its centroid.
        xs = x[order]
        for c in range(5):
            members = result.image_ids[result.labels == c]
            closeness = xs[result.labels == c] @ result.centroids[c]
            assert result.representatives[c] == members[np.argmax(closeness)]

        assert cl.clusters(lib, model_id, 5) == result.as_dict()
        assert stored_rows(lib) == len(ids) and cl.stored_ks(lib, model_id) == [5]
        loaded = cl.load_clustering(lib, model_id, 5)
        assert loaded is not None
        assert np.array_equal(loaded.labels, result.labels) and np.array_equal(loaded.sizes, result.sizes)
        assert np.array_equal(loaded.representatives, result.representatives)
        np.testing.assert_allclose(loaded.centroids, result.centroids, atol=1e-4)


def test_clustering_again_replaces_and_other_ks_are_kept(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        model_id, ids, _, _ = add_clustered(lib, groups=4, per_group=25)
        first = cl.cluster_library(lib, model_id, k=4)
        again = cl.cluster_library(lib, model_id, k=4)
        assert np.array_equal(first.labels, again.labels)  # same seed, same library: same answer
        cl.cluster_library(lib, model_id, k=4, seed=7, niter=3)
        assert stored_rows(lib) == len(ids)  # replaced, not added
        two = cl.cluster_library(lib, model_id, k=2)
        assert stored_rows(lib) == 2 * len(ids) and cl.stored_ks(lib, model_id) == [2, 4]
        assert set(cl.clusters(lib, model_id, 2).values()) == {0, 1} and two.sizes.sum() == len(ids)
        one = cl.cluster_library(lib, model_id, k=1)
        assert (one.labels == 0).all() and one.sizes.tolist() == [len(ids)]
        assert cl.load_clustering(lib, model_id, 9) is None and cl.clusters(lib, model_id, 9) == {}


def test_a_deleted_photo_leaves_its_cluster(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        model_id, ids, _, _ = add_clustered(lib, groups=3, per_group=10)
        cl.cluster_library(lib, model_id, k=3)
        with lib.session.begin() as s:
            s.query(Image).filter(Image.id == int(ids[0])).delete()
        assert int(ids[0]) not in cl.clusters(lib, model_id, 3)
        loaded = cl.load_clustering(lib, model_id, 3)
        assert loaded.sizes.sum() == len(ids) - 1 and int(ids[0]) not in loaded.image_ids


def test_bad_k_and_empty_models_are_refused(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        model_id, _, _, _ = add_clustered(lib, groups=2, per_group=3)
        with pytest.raises(ValueError, match=r"between 1 and the number of photos \(6\)"):
            cl.cluster_library(lib, model_id, k=7)
        with pytest.raises(ValueError, match="between 1"):
            cl.cluster_library(lib, model_id, k=0)
        with pytest.raises(ValueError, match="niter"):
            cl.cluster_library(lib, model_id, k=2, niter=0)
        assert cl.cluster_library(lib, model_id, k=6).sizes.tolist() == [1] * 6  # as many clusters as photos
        with lib.session.begin() as s:
            s.add(Model(name="empty", source="empty", checkpoint_hash="e", dim=8, patch_size=14))
        empty = max(m.id for m in lib.models())
        with pytest.raises(StoreError, match="no photos with vectors"):
            cl.cluster_library(lib, empty, k=2)
