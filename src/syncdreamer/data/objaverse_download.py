"""Select Objaverse uids and download their .glb files with the ``objaverse`` package (``data_prep/download.py``).

The ``objaverse`` package (0.1.x) keeps everything under a module-level ``BASE_PATH`` (``~/.objaverse``
by default); :func:`configure_objaverse` points it at the configured folder, so nothing goes to the
home directory. Files land in ``<download_dir>/hf-objaverse-v1/glbs/<shard>/<uid>.glb`` (the uid is the
file stem, which is what ``data_prep/render.py`` uses). Existing files are never fetched again, one
failing uid never stops the batch, and every run updates a manifest (``manifest.json`` and
``manifest.csv``: uid, status, path, bytes) and writes the selected uids to ``uids.txt``.
"""
from __future__ import annotations

import csv
import difflib
import json
import os
import time
from pathlib import Path

import numpy as np

from . import layout

__all__ = [
    "DownloadError",
    "configure_objaverse",
    "select_uids",
    "download_objects",
    "read_manifest",
    "write_manifest",
    "run_download",
]

_VERSION_DIR = "hf-objaverse-v1"


class DownloadError(RuntimeError):
    """A configuration / environment problem that stops the download (bad selection, no index)."""


def configure_objaverse(download_dir):
    """Import ``objaverse`` and point its storage (``BASE_PATH``) at ``download_dir``; return the module."""
    import objaverse

    base = Path(download_dir).expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    objaverse.BASE_PATH = str(base)
    objaverse._VERSIONED_PATH = str(base / _VERSION_DIR)
    return objaverse


def _call_index(fn, what: str, store: Path):
    """Run an objaverse index loader, turning network errors into one clear :class:`DownloadError`."""
    try:
        return fn()
    except OSError as exc:  # urllib errors are OSErrors
        raise DownloadError(f"cannot load the Objaverse {what} ({type(exc).__name__}: {exc}); it is fetched "
                            f"from huggingface.co into {store} - check the network or place the file there") from exc


def select_uids(objaverse, uids=None, uid_file=None, lvis_categories=None, count=None, seed: int = 0) -> list[str]:
    """The uids to fetch, in a deterministic order.

    * ``uids`` (list) and/or ``uid_file`` (.txt/.pkl list): explicit uids (kept in the given order);
    * ``lvis_categories`` (list of LVIS category names): every uid of those categories (sorted);
    * ``count``: alone, ``count`` uids drawn with ``seed`` from all of Objaverse; with the above, the
      first ``count`` of the selection after a seeded shuffle.
    """
    store = Path(objaverse._VERSIONED_PATH)
    chosen: list[str] = []
    explicit = list(uids or [])
    if uid_file:
        explicit += layout.read_uid_list(uid_file)
    chosen += [u[:-4] if u.endswith(".glb") else u for u in explicit]
    if lvis_categories:
        lvis = _call_index(objaverse.load_lvis_annotations, "LVIS annotations", store)
        unknown = [c for c in lvis_categories if c not in lvis]
        if unknown:
            hints = {c: difflib.get_close_matches(c, list(lvis), n=3) for c in unknown}
            raise DownloadError(f"unknown LVIS categories {unknown}; close names: {hints}")
        for c in lvis_categories:
            chosen += sorted(lvis[c])
    chosen = list(dict.fromkeys(chosen))  # de-duplicate, keep order
    if count is not None:
        count = int(count)
        if count < 0:
            raise DownloadError(f"count must be >= 0, got {count}")
        rng = np.random.default_rng(seed)
        if not chosen and not (uids or uid_file or lvis_categories):
            pool = sorted(_call_index(objaverse.load_uids, "uid index (object-paths.json.gz)", store))
            idx = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
            chosen = [pool[i] for i in sorted(idx)]
        else:
            order = rng.permutation(len(chosen))[:count]
            chosen = [chosen[i] for i in sorted(order)]
    if not chosen and not (uids or uid_file or lvis_categories or count == 0):
        raise DownloadError("nothing selected: give uids=[...], uid_file=<path>, lvis_categories=[...] or count=N")
    return chosen


def download_objects(objaverse, uids: list[str], processes: int = 1, batch_size: int = 64, log=print) -> list[dict]:
    """Fetch ``uids`` (skipping files already there) and return one manifest record per uid.

    Record keys: ``uid``, ``status`` (``present`` / ``downloaded`` / ``unknown_uid`` / ``failed``),
    ``path``, ``bytes``, ``error``. Batches go through ``objaverse.load_objects``; a batch that raises is
    retried uid by uid so one bad uid only fails itself.
    """
    store = Path(objaverse._VERSIONED_PATH)
    paths = _call_index(objaverse._load_object_paths, "uid index (object-paths.json.gz)", store)
    records: dict[str, dict] = {}
    todo = []
    for uid in uids:
        if uid not in paths:
            records[uid] = {"uid": uid, "status": "unknown_uid", "path": "", "bytes": 0,
                            "error": "uid not in object-paths.json.gz"}
            continue
        local = store / paths[uid]
        if local.is_file():
            records[uid] = {"uid": uid, "status": "present", "path": str(local), "bytes": local.stat().st_size,
                            "error": ""}
        else:
            todo.append(uid)
    log(f"{len(uids)} uids: {sum(r['status'] == 'present' for r in records.values())} present, "
        f"{len(todo)} to download, {sum(r['status'] == 'unknown_uid' for r in records.values())} unknown")

    def fetch(batch):
        got = objaverse.load_objects(batch, download_processes=processes) if processes > 1 else \
            objaverse.load_objects(batch)
        for uid in batch:
            p = Path(got.get(uid, store / paths[uid]))
            if p.is_file():
                records[uid] = {"uid": uid, "status": "downloaded", "path": str(p), "bytes": p.stat().st_size,
                                "error": ""}
            else:
                records[uid] = {"uid": uid, "status": "failed", "path": "", "bytes": 0,
                                "error": "objaverse returned no file"}

    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        try:
            fetch(batch)
        except Exception:  # noqa: retry one by one to isolate the failing uid(s)
            for uid in batch:
                try:
                    fetch([uid])
                except Exception as exc:  # network / HTTP / disk errors: record, go on
                    records[uid] = {"uid": uid, "status": "failed", "path": "", "bytes": 0,
                                    "error": f"{type(exc).__name__}: {exc}"}
                    tmp = store / (paths[uid] + ".tmp")
                    if tmp.exists():
                        tmp.unlink()
    return [records[u] for u in uids]


def read_manifest(path) -> dict[str, dict]:
    """``{uid: record}`` from ``<path>.json`` ({} when missing)."""
    p = Path(str(path) + ".json")
    if not p.is_file():
        return {}
    return {r["uid"]: r for r in json.loads(p.read_text())["objects"]}


def write_manifest(path, records: list[dict]) -> tuple[Path, Path]:
    """Merge ``records`` into ``<path>.json`` / ``<path>.csv`` (one row per uid, newest record wins)."""
    merged = read_manifest(path)
    for r in records:
        if r["status"] == "failed" and merged.get(r["uid"], {}).get("status") in ("present", "downloaded"):
            continue
        merged[r["uid"]] = r
    rows = [merged[u] for u in sorted(merged)]
    jp, cp = Path(str(path) + ".json"), Path(str(path) + ".csv")
    jp.parent.mkdir(parents=True, exist_ok=True)
    tmp = jp.with_name(jp.name + ".tmp")
    tmp.write_text(json.dumps({"updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "objects": rows}, indent=1))
    os.replace(tmp, jp)
    tmp = cp.with_name(cp.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["uid", "status", "path", "bytes", "error"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in w.fieldnames})
    os.replace(tmp, cp)
    return jp, cp


def run_download(cfg, log=print) -> dict:
    """Select, download and record (see ``conf/download.yaml``). Returns counts per status and paths."""
    cfg = dict(cfg)
    objaverse = configure_objaverse(cfg["download_dir"])
    uids = select_uids(objaverse, uids=cfg.get("uids"), uid_file=cfg.get("uid_file"),
                       lvis_categories=cfg.get("lvis_categories"), count=cfg.get("count"),
                       seed=int(cfg.get("seed", 0)))
    records = download_objects(objaverse, uids, processes=int(cfg.get("processes", 1)),
                               batch_size=int(cfg.get("batch_size", 64)), log=log)
    manifest = cfg.get("manifest") or str(Path(cfg["download_dir"]) / "manifest")
    jp, cp = write_manifest(manifest, records)
    ok = [r["uid"] for r in records if r["status"] in ("present", "downloaded")]
    uid_list = layout.write_uid_list(Path(cfg["download_dir"]) / "uids.txt", ok)
    counts = {s: sum(r["status"] == s for r in records) for s in ("present", "downloaded", "unknown_uid", "failed")}
    log(f"{counts}; manifest {jp}; uid list {uid_list}; meshes under {Path(objaverse._VERSIONED_PATH) / 'glbs'}")
    return {**counts, "selected": len(uids), "manifest_json": str(jp), "manifest_csv": str(cp),
            "uid_list": str(uid_list), "glb_dir": str(Path(objaverse._VERSIONED_PATH) / "glbs")}
