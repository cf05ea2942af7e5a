"""The manifest of a rendered data set: one Parquet row per object, the only thing training reads at setup.

``<root>/manifest.parquet`` (pyarrow) columns:

=====================  =========================================================================================
``uid``                object id (folder name under ``target/`` and ``input/``)
``split``              ``train`` / ``val`` (set by validation) or null
``status``             ``complete`` (index: every file present), ``valid`` / ``invalid`` (validation verdict),
                       ``incomplete`` (files missing); never dropped silently
``reason``             why an object is ``incomplete`` / ``invalid`` (null otherwise)
``views``              view images present in both rigs (the smaller count)
``image_size``         side of ``target/<uid>/000.png`` in pixels (from the PNG header)
``input_elevations``   the input rig's elevations in radians (list, from its ``meta``)
``render_settings``    JSON of ``render.json`` ``settings`` (our renders) or null
``has_depth``          depth maps present for every view of both rigs
``checked_silhouette`` the silhouette / camera check ran (``data_prep/validate.py`` with meshes)
``sil_inside`` ...     worst view's silhouette scores (``inside``, ``coverage``, ``iou``, ``depth_consistent``)
=====================  =========================================================================================

:func:`index_dataset` builds it from a render folder (ours, the official layout or the official release) in
one linear pass: one directory listing per rig folder and one small read for the input ``meta``, no
per-view stat. :func:`usable_uids` selects the training / validation uids from it without touching the
objects.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import layout
from .meta import MetaError, read_meta

__all__ = ["MANIFEST_NAME", "USABLE", "manifest_schema", "index_object", "index_dataset", "write_manifest",
           "read_manifest", "usable_uids", "manifest_path"]

MANIFEST_NAME = "manifest.parquet"
#: Statuses an object may be trained on: indexed complete, or validated.
USABLE = ("complete", "valid")
SCORE_COLUMNS = ("sil_inside", "sil_coverage", "sil_iou", "depth_consistent")


def manifest_schema():
    """The pyarrow schema of the manifest (see the module docstring)."""
    import pyarrow as pa

    return pa.schema([("uid", pa.string()), ("split", pa.string()), ("status", pa.string()), ("reason", pa.string()),
                      ("views", pa.int32()), ("image_size", pa.int32()), ("input_elevations", pa.list_(pa.float32())),
                      ("render_settings", pa.string()), ("has_depth", pa.bool_()), ("checked_silhouette", pa.bool_()),
                      *[(c, pa.float32()) for c in SCORE_COLUMNS]])


def manifest_path(root) -> Path:
    """``<root>/manifest.parquet``."""
    return Path(root) / MANIFEST_NAME


def _listing(folder: Path) -> set[str] | None:
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _png_size(path: Path) -> int | None:
    """Width of a PNG from its header (IHDR), without decoding; None if unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big")


def _render_settings(folder: Path, names: set[str]) -> str | None:
    if "render.json" not in names:
        return None
    try:
        return json.dumps(json.loads((folder / "render.json").read_text()).get("settings"), sort_keys=True)
    except (ValueError, OSError, AttributeError):
        return None


def index_object(root, uid: str, views: int) -> dict:
    """One manifest row for ``uid`` from two directory listings and the input rig's meta (no per-view stat)."""
    root = Path(root)
    row = {"uid": uid, "split": None, "status": "complete", "reason": None, "views": 0, "image_size": None,
           "input_elevations": None, "render_settings": None, "has_depth": True, "checked_silhouette": False,
           **{c: None for c in SCORE_COLUMNS}}
    problems, counts = [], []
    for rig in layout.RIGS:
        folder = layout.object_dir(root, rig, uid)
        names = _listing(folder)
        if names is None:
            problems.append(f"{rig}: folder missing")
            counts.append(0)
            continue
        missing = [i for i in range(views) if layout.view_name(i) not in names]
        counts.append(views - len(missing))
        if missing:
            problems.append(f"{rig}: {len(missing)} of {views} views missing (e.g. {layout.view_name(missing[0])})")
        row["has_depth"] &= all(layout.depth_name(i) in names for i in range(views))
        if rig == "target":
            row["render_settings"] = _render_settings(folder, names)
            if layout.view_name(0) in names:
                row["image_size"] = _png_size(folder / layout.view_name(0))
        elif "meta.pkl" not in names and "meta.json" not in names:
            problems.append("input: meta.pkl missing")
        else:
            try:
                elev = read_meta(folder / "meta.pkl")["elevations"]
                row["input_elevations"] = [float(x) for x in np.asarray(elev, np.float32)]
                if len(elev) < views:
                    problems.append(f"input: meta has {len(elev)} views, need {views}")
            except (MetaError, OSError) as exc:
                row["status"], row["reason"] = "invalid", str(exc)
    row["views"] = min(counts)
    if problems and row["status"] == "complete":
        row["status"], row["reason"] = "incomplete", "; ".join(problems)
    elif problems:
        row["reason"] = "; ".join([row["reason"], *problems])
    return row


def _object_uids(root: Path) -> list[str]:
    uids: set[str] = set()
    for rig in layout.RIGS:
        try:
            with os.scandir(root / rig) as it:
                uids.update(e.name for e in it if not e.name.startswith(".") and e.is_dir())
        except FileNotFoundError:
            continue
    return sorted(uids)


def index_dataset(root, views: int = 16, progress: bool = True, log: Callable[[str], None] | None = None,
                  write: bool = True) -> list[dict]:
    """Index every object under ``root/target`` and ``root/input`` (one linear pass, tqdm progress bar) and
    write ``<root>/manifest.parquet``. Returns the rows; ``log`` gets one line per unusable object."""
    from tqdm import tqdm

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    uids = _object_uids(root)
    rows = []
    for uid in tqdm(uids, desc=f"indexing {root.name}", unit="obj", disable=not progress, mininterval=2.0):
        row = index_object(root, uid, views)
        rows.append(row)
        if log is not None and row["status"] not in USABLE:
            log(f"{row['status'].upper()} {uid}: {row['reason']}")
    if write:
        write_manifest(root, rows)
    return rows


def write_manifest(root, rows: Iterable[dict] | object) -> Path:
    """Write rows (dicts, or a pyarrow Table) to ``<root>/manifest.parquet`` atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=manifest_schema())
    path = manifest_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_manifest(path, columns: list[str] | None = None):
    """The manifest as a pyarrow Table (``path`` = the file or the data folder holding it)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = manifest_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; build it with `python data_prep/index.py root={path.parent}`")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise MetaError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc}); rebuild it with "
                        f"`python data_prep/index.py root={path.parent}`") from None


def usable_uids(table, split: str | None = None) -> tuple[list[str], dict[str, int]]:
    """Uids whose status is usable (and whose split is ``split`` when given), in manifest order, and the
    count of every other status (for the log)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ok = pc.is_in(table["status"], value_set=pa.array(USABLE))
    if split is not None:
        ok = pc.and_(ok, pc.fill_null(pc.equal(table["split"], split), False))
    uids = table.filter(ok)["uid"].to_pylist()
    statuses = table.filter(pc.invert(ok))["status"].value_counts().to_pylist() if split is None else []
    return uids, {d["values"]: d["counts"] for d in statuses}
