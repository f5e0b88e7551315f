"""What the map's dots are coloured by (cluster, folder, label, date), and the legend that says so.

Pure functions over what the map task read from the library, so the legend and the dots always agree.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

# 20 well-separated colours (Tableau 20 order), cycled for more groups; grey is "none".
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
           "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
           "#7f7f7f", "#c7c7c7"]
NONE_COLOUR = "#6e6e6e"
COLOUR_BY = ("Cluster", "Folder", "Label", "Date")


@dataclass
class PhotoFacts:
    """Per photo id: its folder, first label and capture date (read with the map, off the UI thread)."""

    folder: dict[int, str] = field(default_factory=dict)
    label: dict[int, str] = field(default_factory=dict)
    taken: dict[int, datetime] = field(default_factory=dict)


@dataclass
class LegendEntry:
    name: str
    colour: str
    count: int
    group: int  # the value in `groups`; -1 = none


def colour_of(group: int) -> str:
    return NONE_COLOUR if group < 0 else PALETTE[group % len(PALETTE)]


def _by_key(ids: np.ndarray, key: dict[int, str], none: str) -> tuple[np.ndarray, list[LegendEntry]]:
    counts = Counter(key.get(int(i)) for i in ids)
    names = sorted((k for k in counts if k is not None), key=lambda k: (-counts[k], k))
    index = {k: n for n, k in enumerate(names)}
    groups = np.array([index.get(key.get(int(i)), -1) for i in ids], dtype=np.int64)
    legend = [LegendEntry(k, colour_of(index[k]), counts[k], index[k]) for k in names]
    if counts.get(None):
        legend.append(LegendEntry(none, NONE_COLOUR, counts[None], -1))
    return groups, legend


def groups_for(mode: str, ids: np.ndarray, clusters: np.ndarray | None, facts: PhotoFacts
               ) -> tuple[np.ndarray, list[LegendEntry]]:
    """(group per photo, legend) for one of COLOUR_BY."""
    ids = np.asarray(ids, dtype=np.int64)
    if mode == "Cluster":
        if clusters is None or not (np.asarray(clusters) >= 0).any():
            none = LegendEntry("not clustered yet", NONE_COLOUR, len(ids), -1)
            return np.full(len(ids), -1, dtype=np.int64), [none]
        clusters = np.asarray(clusters, dtype=np.int64)
        counts = Counter(clusters.tolist())
        legend = [LegendEntry(f"Cluster {g + 1}", colour_of(g), counts[g], g) for g in sorted(counts) if g >= 0]
        if counts.get(-1):
            legend.append(LegendEntry("no cluster", NONE_COLOUR, counts[-1], -1))
        return clusters, legend
    if mode == "Folder":
        names = {i: os.path.basename(f.rstrip("/\\")) or f for i, f in facts.folder.items()}
        return _by_key(ids, names, "no folder")
    if mode == "Label":
        return _by_key(ids, facts.label, "no label")
    if mode == "Date":
        years = {i: str(t.year) for i, t in facts.taken.items()}
        spans_one_year = len(set(years.values())) <= 1
        key = {i: t.strftime("%Y-%m") for i, t in facts.taken.items()} if spans_one_year else years
        groups, legend = _by_key(ids, key, "no date")
        # Dates read in order, not by size.
        order = sorted((e for e in legend if e.group >= 0), key=lambda e: e.name)
        remap = {e.group: n for n, e in enumerate(order)}
        groups = np.array([remap.get(int(g), -1) for g in groups], dtype=np.int64)
        legend = [LegendEntry(e.name, colour_of(remap[e.group]), e.count, remap[e.group]) for e in order] + \
                 [e for e in legend if e.group < 0]
        return groups, legend
    raise ValueError(f"colour by one of {', '.join(COLOUR_BY)}, not {mode!r}")


def read_facts(lib, ids: np.ndarray) -> PhotoFacts:
    """Folder, first label and capture date of the mapped photos (one pass over the library's rows)."""
    from engine import labels

    wanted = {int(i) for i in ids}
    folders = {f.id: f.path for f in lib.folders()}
    facts = PhotoFacts()
    for r in lib.images(status="ok"):
        if r.id in wanted:
            # The folder the photo sits in (its subfolder inside the library folder says more than the root).
            facts.folder[r.id] = os.path.dirname(r.path) or folders.get(r.folder_id, "")
            if r.captured_at is not None:
                facts.taken[r.id] = r.captured_at
    for image_id, names in labels.labels(lib).items():
        if image_id in wanted and names:
            facts.label[image_id] = names[0][0]
    return facts
