"""Drive Blender to render mesh files into the official 16-view layout (``data_prep/render.py`` wraps this).

The driver owns all camera math (``syncdreamer.cameras``): per object it builds the fixed target rig and
a random-elevation input rig (seeded by ``seed`` and the uid, so reruns give the same cameras), writes
their ``meta.pkl`` into a work folder and hands Blender camera-to-world matrices in a JSON job. Blender
(``data_prep/blender_render.py``) renders several objects per process and moves each finished rig folder
into place atomically. The driver runs ``workers`` Blender processes in parallel, skips finished objects,
records every object that could not be rendered in ``<output_dir>/failures.jsonl`` (reason, never
stopping the batch) and re-queues objects a crashed Blender process did not reach.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import to_plain
from ..cameras import Rig, focal_from_lens, make_rig, pose_to_blender_c2w
from . import layout
from .mesh_io import MESH_SUFFIXES
from .resources import blender_script_path

__all__ = [
    "BLENDER_SCRIPT",
    "RenderError",
    "RenderTask",
    "resolve_settings",
    "find_blender",
    "probe_blender",
    "discover_meshes",
    "select_shard",
    "object_seed",
    "make_rigs",
    "plan_render",
    "run_render",
]

#: The script Blender runs (package data; ``data_prep/blender_render.py`` in a checkout links to it).
BLENDER_SCRIPT = blender_script_path()

# Settings that go to Blender verbatim (after presets are applied).
_BLENDER_KEYS = (
    "resolution", "samples", "denoise", "adaptive_sampling", "lens_mm", "sensor_mm", "world_color",
    "world_strength", "diffuse_bounces", "glossy_bounces", "transparent_bounces", "transmission_bounces",
    "filter_width", "view_transform", "device", "clip_start", "clip_end", "depth_near", "depth_far",
    "merge_vertices", "cycles_seed", "vertex_color_material",
)


class RenderError(RuntimeError):
    """A configuration or environment problem that stops the whole batch (not a per-object failure)."""


@dataclass
class RenderTask:
    """One object to render: its uid, mesh file and the rigs (``target`` / ``input``) still missing."""

    uid: str
    mesh: Path
    rigs: dict[str, Rig] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------
def resolve_settings(cfg) -> dict:
    """Merge the chosen preset into the config: keys left ``null`` take the preset's value.

    Returns a plain dict; raises :class:`RenderError` for an unknown preset or invalid values.
    """
    cfg = dict(to_plain(cfg))
    presets = cfg.get("presets") or {}
    name = cfg.get("preset")
    if name not in presets:
        raise RenderError(f"unknown preset {name!r}; choose one of {', '.join(sorted(presets))}")
    for key, value in presets[name].items():
        if cfg.get(key) is None:
            cfg[key] = value
    missing = [k for k in ("samples", "denoise", "resolution", "views") if cfg.get(k) is None]
    if missing:
        raise RenderError(f"no value for {', '.join(missing)}: set them or add them to preset {name!r}")
    lo, hi = (float(x) for x in cfg["input_elevation"])
    if not (-90.0 < lo <= hi < 90.0):
        raise RenderError(f"input_elevation must be [low, high] inside (-90, 90), got {cfg['input_elevation']}")
    if int(cfg["views"]) < 1 or int(cfg["resolution"]) < 8 or int(cfg["samples"]) < 1:
        raise RenderError("views >= 1, resolution >= 8 and samples >= 1 are required")
    if str(cfg["denoise"]).lower() not in ("true", "false", "auto"):
        raise RenderError(f"denoise must be true, false or auto, got {cfg['denoise']!r}")
    if int(cfg["num_shards"]) < 1 or not (0 <= int(cfg["shard"]) < int(cfg["num_shards"])):
        raise RenderError(f"need 0 <= shard < num_shards, got shard={cfg['shard']} num_shards={cfg['num_shards']}")
    if int(cfg["workers"]) < 1 or int(cfg["objects_per_process"]) < 1:
        raise RenderError("workers and objects_per_process must be >= 1")
    return cfg


def find_blender(path=None) -> str:
    """The Blender executable: ``path`` if given, else ``blender`` on PATH; :class:`RenderError` if missing."""
    if path:
        p = shutil.which(str(path)) or (str(path) if Path(path).is_file() else None)
        if p is None:
            raise RenderError(f"Blender not found at {path!r}; pass blender=<path to the blender executable>")
        return p
    p = shutil.which("blender")
    if p is None:
        raise RenderError("Blender not found on PATH: install it (Debian: apt-get install blender, or `make blender`) "
                          "or pass blender=<path to the blender executable>")
    return p


def _blender_cmd(blender: str, *args: str) -> list[str]:
    if not BLENDER_SCRIPT.is_file():
        raise RenderError(f"{BLENDER_SCRIPT} not found: the syncdreamer installation is incomplete; reinstall it")
    return [blender, "-b", "--factory-startup", "-noaudio", "--python", str(BLENDER_SCRIPT), "--", *args]


def probe_blender(blender: str, work_dir, timeout: float = 120.0) -> dict:
    """Ask Blender what it can do: ``{"version", "numpy", "oidn", "python"}``."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / f"probe-{os.getpid()}.json"
    proc = subprocess.run(_blender_cmd(blender, "--probe", str(out)), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise RenderError(f"Blender ({blender}) failed to start (exit {proc.returncode}): {' | '.join(tail)}")
    info = json.loads(out.read_text())
    out.unlink()
    return info


# ----------------------------------------------------------------------------------------------------------
# what to render
# ----------------------------------------------------------------------------------------------------------
def discover_meshes(inp, uids=None) -> dict[str, Path]:
    """``{uid: mesh path}`` for a mesh file or a folder (searched recursively); uid = file stem.

    ``uids`` (a list, or a ``.txt``/``.pkl`` uid-list path) restricts the set and must all be found.
    Two files with the same stem raise :class:`RenderError` (uids must be unique).
    """
    inp = Path(str(inp))
    if inp.is_file():
        if inp.suffix.lower() not in MESH_SUFFIXES:
            raise RenderError(f"{inp}: not a mesh file (expected one of {', '.join(MESH_SUFFIXES)})")
        found = {inp.stem: inp}
    elif inp.is_dir():
        found = {}
        for p in sorted(inp.rglob("*")):
            if p.is_file() and p.suffix.lower() in MESH_SUFFIXES and not p.name.startswith("."):
                if p.stem in found:
                    raise RenderError(f"two meshes share the uid {p.stem!r}: {found[p.stem]} and {p}; rename one")
                found[p.stem] = p
        if not found:
            raise RenderError(f"{inp}: no mesh files ({', '.join(MESH_SUFFIXES)}) found")
    else:
        raise RenderError(f"input {str(inp)!r} does not exist; pass input=<mesh file or folder>")
    if uids is not None:
        if isinstance(uids, (str, Path)):
            uids = layout.read_uid_list(uids)
        missing = [u for u in uids if u not in found]
        if missing:
            raise RenderError(f"{len(missing)} uid(s) from the list have no mesh under {inp}, e.g. {missing[:3]}")
        found = {u: found[u] for u in uids}
    return dict(sorted(found.items()))


def select_shard(uids, shard: int, num_shards: int) -> list[str]:
    """The uids of one shard: every ``num_shards``-th uid of the sorted list, starting at ``shard``."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise RenderError(f"need 0 <= shard < num_shards, got shard={shard} num_shards={num_shards}")
    return sorted(uids)[shard::num_shards]


def object_seed(seed: int, uid: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``uid`` (stable across runs, shards and machines)."""
    digest = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), digest])


def make_rigs(uid: str, settings: dict) -> dict[str, Rig]:
    """The two rigs of an object: fixed ``target`` and random-elevation ``input`` (same azimuths)."""
    res, views = int(settings["resolution"]), int(settings["views"])
    focal = focal_from_lens(float(settings["lens_mm"]), float(settings["sensor_mm"]), res)
    dist = float(settings["distance"])
    target = make_rig(views, float(settings["elevation"]), dist, res, focal)
    lo, hi = (float(x) for x in settings["input_elevation"])
    elev = object_seed(int(settings["seed"]), uid).uniform(lo, hi, size=views)
    inp = make_rig(views, elev, dist, res, focal)
    return {"target": target, "input": inp}


def _failed_uids(output_dir: Path) -> set[str]:
    return {r["uid"] for r in layout.read_jsonl(output_dir / "failures.jsonl") if "uid" in r}


def record_failure(output_dir, uid: str, mesh, reason: str, **extra) -> None:
    """Append one record to ``<output_dir>/failures.jsonl``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rec = {"uid": uid, "mesh": str(mesh), "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    with open(output_dir / "failures.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def plan_render(settings: dict) -> tuple[list[RenderTask], dict]:
    """Decide what to render. Returns the tasks and counts ``{"total", "complete", "skipped_failed", "blocked"}``.

    An object is complete when both rig folders hold all views, depth maps and ``meta.pkl``. A rig folder
    that exists but is incomplete is reported as a failure (``blocked``) unless ``replace_incomplete``.
    """
    out = Path(settings["output_dir"])
    meshes = discover_meshes(settings["input"], settings.get("uids"))
    uids = select_shard(list(meshes), int(settings["shard"]), int(settings["num_shards"]))
    failed = set() if settings.get("retry_failed") else _failed_uids(out)
    views = int(settings["views"])
    tasks, counts = [], {"total": len(uids), "complete": 0, "skipped_failed": 0, "blocked": 0}
    for uid in uids:
        missing = [r for r in layout.RIGS if not layout.rig_complete(layout.object_dir(out, r, uid), views)]
        if not missing:
            counts["complete"] += 1
            continue
        if uid in failed:
            counts["skipped_failed"] += 1
            continue
        partial = [r for r in missing if layout.object_dir(out, r, uid).exists()]
        if partial and not settings.get("replace_incomplete"):
            counts["blocked"] += 1
            record_failure(out, uid, meshes[uid], f"incomplete existing folder(s) {partial}: delete them or "
                           "set replace_incomplete=true")
            continue
        for r in partial:
            shutil.rmtree(layout.object_dir(out, r, uid))
        rigs = make_rigs(uid, settings)
        tasks.append(RenderTask(uid, meshes[uid], {r: rigs[r] for r in missing}))
    return tasks, counts


# ----------------------------------------------------------------------------------------------------------
# running Blender
# ----------------------------------------------------------------------------------------------------------
def _job_object(task: RenderTask, out: Path) -> dict:
    work = out / ".work" / task.uid
    if work.exists():
        shutil.rmtree(work)  # leftovers of an interrupted run: never final data
    rigs = []
    for name, rig in task.rigs.items():
        layout.write_meta(work / name / "meta.pkl", rig)
        rigs.append({"name": name, "c2w": pose_to_blender_c2w(rig.poses).tolist(),
                     "final_dir": str(layout.object_dir(out, name, task.uid))})
    return {"uid": task.uid, "mesh": str(Path(task.mesh).resolve()), "work_dir": str(work), "rigs": rigs}


def _run_chunk(chunk: list[RenderTask], settings: dict, blender_settings: dict, blender: str,
               index: int) -> tuple[list[str], list[dict], list[RenderTask]]:
    """Run one Blender process on ``chunk``. Returns (done uids, failure records, tasks not reached)."""
    out = Path(settings["output_dir"])
    jobs = out / ".work" / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{index}"
    status, job_path, log_path = jobs / f"status-{tag}.jsonl", jobs / f"job-{tag}.json", jobs / f"log-{tag}.txt"
    status.unlink(missing_ok=True)
    job = {"settings": blender_settings, "status": str(status),
           "objects": [_job_object(t, out) for t in chunk]}
    job_path.write_text(json.dumps(job))
    timeout = float(settings["timeout_per_object_s"]) * len(chunk) + 60.0
    rc, timed_out = None, False
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(_blender_cmd(blender, "--job", str(job_path)), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            timed_out = True
    records = layout.read_jsonl(status)
    ended = {r["uid"]: r for r in records if r.get("event") in ("done", "error")}
    started = [r["uid"] for r in records if r.get("event") == "start"]
    by_uid = {t.uid: t for t in chunk}
    done, failures, unreached = [], [], []
    if not started:  # Blender died before its first object: do not re-queue forever
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:] if log_path.is_file() else []
        why = "timed out" if timed_out else f"exited with code {rc}"
        reason = f"Blender {why} before rendering any object of its batch"
        failures = [{"uid": t.uid, "mesh": str(t.mesh), "reason": reason, "log_tail": " | ".join(tail)}
                    for t in chunk]
        for t in chunk:
            shutil.rmtree(out / ".work" / t.uid, ignore_errors=True)
        return done, failures, unreached
    for t in chunk:
        rec = ended.get(t.uid)
        if rec is not None and rec["event"] == "done":
            done.append(t.uid)
        elif rec is not None:
            failures.append({"uid": t.uid, "mesh": str(t.mesh), "reason": rec.get("error", "unknown error")})
        elif t.uid in started:
            why = "timed out" if timed_out else f"Blender exited with code {rc}"
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:] if log_path.is_file() else []
            failures.append({"uid": t.uid, "mesh": str(t.mesh), "reason": f"{why} while rendering this object",
                             "log_tail": " | ".join(tail)})
        else:
            unreached.append(by_uid[t.uid])
    if not unreached:
        for p in (status, job_path, log_path):
            p.unlink(missing_ok=True)
    for t in chunk:
        if t.uid not in done:
            shutil.rmtree(out / ".work" / t.uid, ignore_errors=True)
    return done, failures, unreached


def _blender_settings(settings: dict, info: dict) -> dict:
    bs = {k: settings[k] for k in _BLENDER_KEYS}
    denoise = str(settings["denoise"]).lower()
    if denoise == "true" and not info.get("oidn"):
        raise RenderError(f"denoise=true but this Blender ({info.get('version')}) has no OpenImageDenoise; "
                          "set denoise=false or denoise=auto")
    bs["denoise"] = denoise == "true" or (denoise == "auto" and bool(info.get("oidn")))
    threads = int(settings["threads"])
    if threads <= 0:
        threads = max(1, (os.cpu_count() or 1) // int(settings["workers"]))
    bs["threads"] = threads
    return bs


def _run_cpu(tasks: list[RenderTask], settings: dict, summary: dict, t0: float, log) -> dict:
    """The Blender-free path: :func:`syncdreamer.data.raster.render_object_cpu` per object."""
    from .raster import render_object_cpu

    out = Path(settings["output_dir"])
    log(f"CPU rasteriser (not Blender): rendering {len(tasks)} objects")
    for t in tasks:
        try:
            render_object_cpu(t.mesh, out, t.uid, t.rigs, float(settings["depth_near"]), float(settings["depth_far"]))
            summary["rendered"] += 1
        except Exception as exc:  # one broken mesh never stops the batch
            reason = f"{type(exc).__name__}: {exc}"
            record_failure(out, t.uid, t.mesh, reason)
            log(f"FAILED {t.uid}: {reason}")
            summary["failed"] += 1
            shutil.rmtree(out / ".work" / t.uid, ignore_errors=True)
    try:
        (out / ".work").rmdir()
    except OSError:
        pass
    summary["seconds"] = time.time() - t0
    return summary


def run_render(cfg, log=print) -> dict:
    """Render everything ``cfg`` asks for (see ``conf/render.yaml``) and return a summary dict.

    Keys: ``total``, ``complete`` (already there), ``rendered``, ``failed``, ``skipped_failed``,
    ``blocked``, ``seconds``, ``blender`` (probe info), ``settings`` (what Blender got).
    """
    t0 = time.time()
    settings = resolve_settings(cfg)
    out = Path(str(settings["output_dir"]))
    settings["output_dir"] = str(out)
    renderer = settings.get("renderer", "blender")
    if renderer not in ("blender", "cpu"):
        raise RenderError(f"renderer must be blender or cpu, got {renderer!r}")
    blender = find_blender(settings.get("blender")) if renderer == "blender" else None
    tasks, counts = plan_render(settings)
    summary = dict(counts, rendered=0, failed=counts["blocked"], blender=None, settings=None)
    if not tasks:
        log(f"nothing to render: {counts['complete']} of {counts['total']} objects complete, "
            f"{counts['skipped_failed']} previously failed (retry_failed=true retries them)")
        summary["seconds"] = time.time() - t0
        return summary
    if renderer == "cpu":
        return _run_cpu(tasks, settings, summary, t0, log)
    info = probe_blender(blender, out / ".work")
    if any(Path(t.mesh).suffix.lower() in (".glb", ".gltf") for t in tasks) and not info.get("numpy"):
        raise RenderError(f"Blender {info['version']} has no numpy, which its glTF importer needs: "
                          "apt-get install python3-numpy (Debian) or use a Blender build that bundles it")
    bsettings = _blender_settings(settings, info)
    summary["blender"], summary["settings"] = info, bsettings
    log(f"Blender {info['version']}: rendering {len(tasks)} objects ({counts['complete']} already complete), "
        f"{settings['workers']} worker(s), {bsettings['samples']} samples, denoise={bsettings['denoise']}")
    per = int(settings["objects_per_process"])
    queue = list(tasks)
    index = 0
    with ThreadPoolExecutor(max_workers=int(settings["workers"])) as pool:
        while queue:
            chunks = [queue[i:i + per] for i in range(0, len(queue), per)]
            queue = []
            futures = []
            for chunk in chunks:
                futures.append(pool.submit(_run_chunk, chunk, settings, bsettings, blender, index))
                index += 1
            for fut in futures:
                done, failures, unreached = fut.result()
                summary["rendered"] += len(done)
                for rec in failures:
                    record_failure(out, **rec)
                    log(f"FAILED {rec['uid']}: {rec['reason']}")
                summary["failed"] += len(failures)
                queue.extend(unreached)
    for d in (out / ".work" / "jobs", out / ".work"):
        try:
            d.rmdir()  # only when empty: logs of crashed processes stay for inspection
        except OSError:
            pass
    summary["seconds"] = time.time() - t0
    log(f"done: {summary['rendered']} rendered, {summary['failed']} failed, {counts['complete']} were complete, "
        f"{summary['seconds']:.1f} s")
    return summary
