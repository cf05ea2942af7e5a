"""The benchmark driver behind ``evaluate.py`` (config ``conf/evaluate.yaml``).

Stages per object: **ground truth** (views, cameras, mesh, depth points); (optional) **generate** -> views
of each sample; (optional) **reconstruct** -> a mesh for each sample that has none (NeuS preset
``recon``, ``auto`` = official on a GPU, fast on a CPU); **measure** -> one CSV row per sample under
``protocol`` (``official``: the paper's evaluation, Volume IoU with mesh2sdf; ``exact``: our finer IoU).
Then ``metrics.csv``, ``summary.md`` and ``summary.json`` in ``output_dir`` (both with the provenance: protocol,
NeuS preset and steps, sampler and steps, cfg scale, seeds, sample_num, package versions) and, with
``logger=wandb``, the same to W&B.

The generate stage is a plug-in: pass ``generate_fn`` to :func:`run_benchmark`, or set ``generate`` in
the config to a Hydra ``_target_`` that builds one. Its signature is
``generate_fn(name: str, input_image: Path, out_dir: Path, seed: int) -> None``: it writes the views of one
sample (``000..015.png`` or a strip) into ``out_dir``. The input is the GT view ``000.png`` (the input
viewpoint is target view 0). Without a generator, predictions are read from ``predictions_dir``.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from syncdreamer.config import to_plain
from syncdreamer.metrics import geometry as geo
from syncdreamer.metrics.image import LPIPSMetric
from syncdreamer.metrics.protocol import (GSO_PREP_MARKER, METRICS, _one_line, evaluate_sample, find_samples,
                                          gso_canonical_mesh, gt_points_from_depth, gt_rotation_deg, markdown_summary, summarize,
                                          write_csv)
from syncdreamer.recon.io import load_cameras, load_views

__all__ = ["run_benchmark", "list_objects"]

GenerateFn = Callable[[str, Path, Path, int], None]


def list_objects(gt_dir, objects=None) -> list[str]:
    """Object names: ``objects`` if given (a list, or a ``.txt`` uid list file, relative to ``gt_dir`` or
    absolute), else the sub-folders of ``<gt_dir>/target``."""
    if isinstance(objects, (str, Path)) and str(objects).endswith(".txt"):
        path = Path(objects) if Path(objects).is_absolute() else Path(gt_dir) / objects
        if not path.is_file():
            raise ValueError(f"objects={objects}: uid list {path} not found (prepare the data set first)")
        return [u.strip() for u in path.read_text().splitlines() if u.strip()]
    if objects:
        return list(objects)
    d = Path(gt_dir) / "target"
    if not d.is_dir():
        raise ValueError(f"ground truth folder {d} not found (expected <gt_dir>/target/<name>/000..015.png)")
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _gt_mesh(gt_dir: Path, name: str, cfg: dict):
    """The GT mesh in the rig frame (normalised unless ``gt_normalize=false``; GSO rotation with
    ``gt_rotation``), or None when ``<gt_dir>/meshes`` has none."""
    folder = gt_dir / "meshes"
    table = cfg.get("gt_rotation")
    for s in (".ply", ".obj", ".glb", ".gltf", ".stl"):
        p = folder / f"{name}{s}"
        if p.is_file():
            m = geo.load_mesh(p)
            if cfg.get("gt_normalize", True):
                return gso_canonical_mesh(m, name, table)
            return geo.rotate_z(m, gt_rotation_deg(name, table))
    return None


def _build_generate_fn(spec):
    if spec is None:
        return None
    if callable(spec):
        return spec
    from syncdreamer.config import instantiate_reporting

    fn = instantiate_reporting(spec, (ValueError, FileNotFoundError))  # a bad checkpoint path etc.: the cause
    if not callable(fn):
        raise ValueError(f"generate config did not build a callable: {spec}")
    return fn


def _logger(cfg: dict, output_dir: Path):
    """A wandb run when ``cfg.logger`` is ``"wandb"`` or the project's ``conf/logger/wandb.yaml`` node."""
    spec = cfg.get("logger")
    if spec in (None, "none", {}) or (isinstance(spec, dict) and "wandb" not in spec):
        return None
    if spec == "wandb":
        spec = {"wandb": {}}
    if not isinstance(spec, dict):
        raise ValueError(f"logger must be none or wandb, got {spec!r}")
    import wandb
    w = spec["wandb"] or {}
    return wandb.init(project=w.get("project", "syncdreamer"), entity=w.get("entity"), name=w.get("name"),
                      group=w.get("group"), tags=w.get("tags"), mode="offline" if w.get("offline") else None,
                      dir=str(output_dir), job_type="evaluate",
                      config={k: v for k, v in cfg.items() if k not in ("logger", "paths")})


#: Packages whose versions go into the provenance of a report.
VERSIONED_PACKAGES = ("syncdreamer", "torch", "numpy", "trimesh", "mesh2sdf", "torchmetrics", "lpips", "scipy",
                      "embreex")
GEOMETRY = {"chamfer", "iou", "fscore"}


@dataclass
class _Run:
    """Everything one benchmark run needs, resolved once from the config."""

    cfg: dict
    gt_dir: Path
    out: Path
    metrics: tuple
    n_views: int
    protocol: str
    pred_dir: Path | None
    generate_fn: GenerateFn | None
    reconstruct_fn: Callable | None
    recon: dict | None
    lpips: LPIPSMetric | None
    wandb_run: object
    log: Callable
    generation: list = field(default_factory=list)
    given_recon: list = field(default_factory=list)  # recon.json beside given meshes (reconstruct.py)


def _setup(cfg, generate_fn, reconstruct_fn, log) -> _Run:
    """Check the config and build the run (ValueError, one line, on a bad setting)."""
    cfg = dict(to_plain(cfg))
    metrics = tuple(cfg.get("metrics") or METRICS)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {list(METRICS)}")
    protocol = str(cfg.get("protocol", "official"))
    if protocol not in geo.IOU_PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(geo.IOU_PROTOCOLS)}, got {protocol!r}")
    if cfg.get("gt_rotation") not in (None, "none", False) and (Path(cfg["gt_dir"]) / GSO_PREP_MARKER).is_file():
        raise ValueError(f"{cfg['gt_dir']} was prepared by data_prep/gso.py, which already applied the GSO rotation "
                         "(once): evaluate it with gt_rotation=none")
    generate_fn = generate_fn or _build_generate_fn(cfg.get("generate"))
    out = Path(cfg["output_dir"])
    pred_dir = Path(cfg["predictions_dir"]) if cfg.get("predictions_dir") else None
    if generate_fn is None and pred_dir is None:
        raise ValueError("set predictions_dir (precomputed views) or a generate stage")
    if generate_fn is not None:
        pred_dir = out / "predictions"
    recon = None
    if cfg.get("reconstruct") and reconstruct_fn is None and set(metrics) & GEOMETRY:
        from syncdreamer.devices import pick_device
        from syncdreamer.recon.neus import estimate_fit_seconds
        from syncdreamer.recon.presets import resolve_preset
        recon = resolve_preset(cfg.get("recon") or {"name": "auto"}, pick_device(cfg.get("device", "auto")),
                               estimate_fit_seconds, log=log)
    out.mkdir(parents=True, exist_ok=True)
    lp = None
    if "lpips" in metrics:
        lc = cfg.get("lpips") or {}
        lp = LPIPSMetric(pretrained=bool(lc.get("pretrained", True)), device=lc.get("device", "cpu"))
    return _Run(cfg, Path(cfg["gt_dir"]), out, metrics, int(cfg.get("n_views", 16)), protocol, pred_dir,
                generate_fn, reconstruct_fn, recon, lp, _logger(cfg, out), log)


def _load_ground_truth(run: _Run, name: str) -> dict:
    """GT views, cameras, mesh and depth points of one object (raises on unusable ground truth)."""
    folder = run.gt_dir / "target" / name
    views = load_views(folder, run.n_views)
    meta = folder / "meta.pkl"
    poses, Ks = load_cameras(meta if meta.is_file() else None, run.n_views, views.shape[1], run.cfg.get("rig"))
    if views.shape[-1] == 4 and views[..., 3].max() <= 0:
        raise ValueError("GT views have no foreground")
    want = set(run.metrics)
    mesh = _gt_mesh(run.gt_dir, name, run.cfg) if want & GEOMETRY else None
    pts = None
    if want & {"chamfer", "fscore"} and run.cfg.get("gt_points", "auto") in ("auto", "depth"):
        pts = gt_points_from_depth(folder, poses, Ks)
        if pts is None and run.cfg.get("gt_points") == "depth":
            raise ValueError("gt_points=depth but the GT depth maps NNN_depth.png are missing")
    return {"folder": folder, "views": views, "poses": poses, "Ks": Ks, "mesh": mesh, "points": pts}


def _generate(run: _Run, name: str, input_png: Path) -> list[dict]:
    """Run the generate stage for every seed (existing samples kept); returns failure rows."""
    failed = []
    for seed in run.cfg.get("seeds") or [0]:
        d = run.pred_dir / name / str(seed)
        if run.cfg.get("skip_existing", True) and d.is_dir() and any(d.iterdir()):
            continue
        d.mkdir(parents=True, exist_ok=True)
        try:
            run.generate_fn(name, input_png, d, int(seed))
        except Exception as e:
            failed.append({"object": name, "sample": str(seed), "status": "failed", "error": f"generate: {_one_line(e)}"})
    return failed


def _samples(run: _Run, name: str):
    samples = find_samples(run.pred_dir, name)
    if run.cfg.get("seeds") and run.generate_fn is None and run.cfg.get("filter_seeds", False):
        samples = [s for s in samples if s.sample in {str(x) for x in run.cfg["seeds"]}]
    for s in samples:
        _append_record(run.generation, (s.views if s.views.is_dir() else s.views.parent) / "cameras.json")
        if s.mesh is not None:  # meshes made by reconstruct.py carry recon.json (preset, steps)
            _append_record(run.given_recon, s.mesh.parent / "recon.json")
    return samples


def _append_record(records: list, path: Path) -> None:
    """Append the JSON object in ``path`` to ``records`` (provenance only: a missing or malformed file is skipped)."""
    if not path.is_file():
        return
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return
    if isinstance(record, dict):
        records.append(record)


def _predicted_mesh(run: _Run, name: str, s, pred_views, gt: dict):
    if s.mesh is not None:
        return geo.load_mesh(s.mesh)
    if not (run.cfg.get("reconstruct") and pred_views is not None and set(run.metrics) & GEOMETRY):
        return None
    rdir = run.out / "meshes" / name / s.sample
    if run.reconstruct_fn is not None:
        return run.reconstruct_fn(pred_views, gt["poses"], gt["Ks"], rdir)
    from syncdreamer.recon.pipeline import reconstruct_views
    return reconstruct_views(pred_views, gt["poses"], gt["Ks"], run.recon, rdir, run.cfg.get("mask_source", "auto"),
                             device=run.cfg.get("device", "auto"), seed=int(run.cfg.get("seed", 0)),
                             turntable_format=None, formats=("ply",), log=None)["mesh"]


def _measure(run: _Run, name: str, s, gt: dict) -> dict:
    """One CSV row: load the sample's views and mesh (reconstructing it when asked), then the metrics."""
    t0 = time.time()
    row, errors = {"object": name, "sample": s.sample}, []
    pred_views = pred_mesh = None
    try:
        pred_views = load_views(s.views, run.n_views)
    except Exception as e:
        errors.append(f"views: {_one_line(e)}")
    try:
        pred_mesh = _predicted_mesh(run, name, s, pred_views, gt)
    except Exception as e:
        errors.append(f"mesh: {_one_line(e)}")
    g = run.cfg.get("geometry") or {}
    res = evaluate_sample(pred_views, gt["views"], pred_mesh=pred_mesh, gt_mesh=gt["mesh"], gt_points=gt["points"],
                          poses=gt["poses"], Ks=gt["Ks"], lpips_metric=run.lpips, metrics=run.metrics,
                          voxel=float(g.get("voxel", 0.01)), fscore_threshold=float(g.get("fscore_threshold", 0.02)),
                          iou_resolution=int(g.get("iou_resolution", 64)), iou_bound=float(g.get("iou_bound", 0.6)),
                          iou_fallback=bool(g.get("iou_fallback", True)), iou_protocol=run.protocol,
                          ssim_data_range=run.cfg.get("ssim_data_range"), depth_size=int(gt["views"].shape[1]))
    errors += res.pop("errors")
    row.update(res)
    row.update(status="failed" if errors else "ok", error="; ".join(errors), seconds=round(time.time() - t0, 2))
    return row


def _evaluate_object(run: _Run, name: str) -> list[dict]:
    """All rows of one object (a single failure row when its ground truth or predictions are unusable)."""
    try:
        gt = _load_ground_truth(run, name)
    except Exception as e:
        return [{"object": name, "sample": "-", "status": "failed", "error": f"ground truth: {_one_line(e)}"}]
    rows = _generate(run, name, gt["folder"] / "000.png") if run.generate_fn is not None else []
    samples = _samples(run, name)
    if not samples:
        return rows + [{"object": name, "sample": "-", "status": "failed",
                        "error": f"no predicted views under {run.pred_dir}/{name}"}]
    for s in samples:
        row = _measure(run, name, s, gt)
        rows.append(row)
        run.log(f"[{name}/{s.sample}] " + "  ".join(f"{m} {row[m]:.4f}" for m in run.metrics if m in row)
                + (f"  FAILED: {row['error']}" if row["error"] else ""))
        if run.wandb_run is not None:
            run.wandb_run.log({f"{name}/{m}": row[m] for m in run.metrics if m in row})
    return rows


def _distinct(values) -> list:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def provenance(run: _Run) -> dict:
    """What produced the numbers: protocol, NeuS preset and steps, generation settings, package versions.

    Generation settings come from each sample's ``cameras.json`` (written by ``generate.py``), else from the
    config's ``generation`` block (declared by the user), else ``not recorded``."""
    declared = run.cfg.get("generation") or {}
    gen = run.generation

    def field_(key, cfg_key=None):
        vals = _distinct(m.get(key) for m in gen) or _distinct([declared.get(cfg_key or key)])
        return vals if vals else "not recorded"

    g = run.cfg.get("geometry") or {}
    iou = ("mesh2sdf 64^3 over [-1, 1]^3, fix=False" if run.protocol == "official" else
           f"exact {g.get('iou_resolution', 64)}^3 cell centres over [-{g.get('iou_bound', 0.6)}, {g.get('iou_bound', 0.6)}]^3")
    versions = {}
    for pkg in VERSIONED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    versions["python"] = platform.python_version()
    recon, given = run.recon, run.given_recon
    if recon:
        preset, steps = recon["name"], int(recon["train"]["steps"])
    elif run.reconstruct_fn:
        preset, steps = "custom reconstruct_fn", None
    elif given:  # meshes made by reconstruct.py, which leaves recon.json beside each mesh
        presets, all_steps = _distinct(r.get("preset") for r in given), _distinct(r.get("steps") for r in given)
        preset = f"{', '.join(map(str, presets)) or 'not recorded'} (meshes given)"
        steps = all_steps[0] if len(all_steps) == 1 else (all_steps or None)
    else:
        preset, steps = "none (meshes given)", None
    return {
        "protocol": run.protocol, "volume_iou": iou, "chamfer": f"depth points at the rig, voxel {g.get('voxel', 0.01)}",
        "neus_preset": preset, "neus_steps": steps,
        "sampler": field_("sampler"), "sample_steps": field_("sample_steps"), "cfg_scale": field_("cfg_scale"),
        "seeds": _distinct(m.get("seed") for m in gen) or run.cfg.get("seeds") or "not recorded",
        "sample_num": field_("sample_num"), "versions": versions,
    }


def _write_reports(run: _Run, rows: list[dict]) -> tuple[dict, dict]:
    """metrics.csv, summary.md, summary.json (+ W&B); returns (summary, files)."""
    summary = summarize([r for r in rows if r.get("sample") != "-"], run.metrics)
    summary["failed_objects"] = sorted({r["object"] for r in rows if r.get("status") == "failed"})
    summary["provenance"] = provenance(run)
    files = {"csv": str(write_csv(rows, run.out / "metrics.csv"))}
    md = markdown_summary(summary, rows, run.metrics, run.cfg.get("title", "Benchmark"), summary["provenance"])
    (run.out / "summary.md").write_text(md)
    (run.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    files.update(markdown=str(run.out / "summary.md"), json=str(run.out / "summary.json"))
    if run.wandb_run is not None:
        _log_summary_wandb(run.wandb_run, summary, rows, run.metrics)
    return summary, files


def _log_summary_wandb(wrun, summary: dict, rows: list[dict], metrics):
    import wandb

    for agg in ("mean", "std", "best"):
        wrun.summary.update({f"{agg}/{k}": v for k, v in summary[agg].items()})
    wrun.summary.update({f"provenance/{k}": str(v) for k, v in summary["provenance"].items()})
    cols = ["object", "sample", "status", *metrics, "error"]
    wrun.log({"metrics": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
    wrun.finish()


def run_benchmark(cfg, generate_fn: GenerateFn | None = None, reconstruct_fn=None, log=print) -> dict:
    """Run the protocol; returns ``{"rows": [...], "summary": {...}, "files": {...}}``.

    ``reconstruct_fn(views (N,H,W,C), poses, Ks, out_dir) -> trimesh`` overrides the NeuS stage (tests)."""
    run = _setup(cfg, generate_fn, reconstruct_fn, log)
    rows: list[dict] = []
    for name in list_objects(run.gt_dir, run.cfg.get("objects")):
        t0 = time.time()
        new = _evaluate_object(run, name)
        for r in new:
            if r.get("sample") == "-":
                log(f"[{name}] failed: {r['error']}")
        rows += new
        log(f"[{name}] {time.time() - t0:.1f} s")
    summary, files = _write_reports(run, rows)
    return {"rows": rows, "summary": summary, "files": files}
