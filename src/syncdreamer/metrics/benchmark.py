"""The benchmark driver behind ``evaluate.py`` (config ``conf/evaluate.yaml``).

Stages per object: (optional) **generate** -> views of each sample; (optional) **reconstruct** -> a mesh
for each sample that has none; **measure** -> one CSV row per sample. Then ``metrics.csv``,
``summary.md`` and ``summary.json`` in ``output_dir`` and, with ``logger=wandb``, the same to W&B.

The generate stage is a plug-in: pass ``generate_fn`` to :func:`run_benchmark`, or set ``generate`` in
the config to a Hydra ``_target_`` that builds one. Its signature is
``generate_fn(name: str, input_image: Path, out_dir: Path, seed: int) -> None``: it writes the views of one
sample (``000..015.png`` or a strip) into ``out_dir``. The input is the GT view ``000.png`` (the input
viewpoint is target view 0). Without a generator, predictions are read from ``predictions_dir``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from syncdreamer.config import to_plain
from syncdreamer.metrics import geometry as geo
from syncdreamer.metrics.image import LPIPSMetric
from syncdreamer.metrics.protocol import (METRICS, Sample, _one_line, evaluate_sample, find_samples,
                                          gt_points_from_depth, gt_rotation_deg, markdown_summary, summarize,
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
    folder = gt_dir / "meshes"
    for s in (".ply", ".obj", ".glb", ".gltf", ".stl"):
        p = folder / f"{name}{s}"
        if p.is_file():
            m = geo.load_mesh(p)
            if cfg.get("gt_normalize", True):
                m = geo.normalize_mesh(m)
            return geo.rotate_z(m, gt_rotation_deg(name, cfg.get("gt_rotation")))
    return None


def _build_generate_fn(spec):
    if spec is None:
        return None
    if callable(spec):
        return spec
    from hydra.utils import instantiate
    fn = instantiate(spec)
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


def run_benchmark(cfg, generate_fn: GenerateFn | None = None, reconstruct_fn=None, log=print) -> dict:
    """Run the protocol; returns ``{"rows": [...], "summary": {...}, "files": {...}}``.

    ``reconstruct_fn(views (N,H,W,C), poses, Ks, out_dir) -> trimesh`` overrides the NeuS stage (tests)."""
    cfg = dict(to_plain(cfg))
    gt_dir = Path(cfg["gt_dir"])
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    metrics = tuple(cfg.get("metrics") or METRICS)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {list(METRICS)}")
    n_views = int(cfg.get("n_views", 16))
    generate_fn = generate_fn or _build_generate_fn(cfg.get("generate"))
    pred_dir = Path(cfg["predictions_dir"]) if cfg.get("predictions_dir") else None
    if generate_fn is None and pred_dir is None:
        raise ValueError("set predictions_dir (precomputed views) or a generate stage")
    if generate_fn is not None:
        pred_dir = out / "predictions"
    lp = None
    if "lpips" in metrics:
        lc = cfg.get("lpips") or {}
        lp = LPIPSMetric(pretrained=bool(lc.get("pretrained", True)), device=lc.get("device", "cpu"))
    run = _logger(cfg, out)
    g = cfg.get("geometry") or {}
    rows: list[dict] = []
    for name in list_objects(gt_dir, cfg.get("objects")):
        t_obj = time.time()
        gt_folder = gt_dir / "target" / name
        try:
            gt_views = load_views(gt_folder, n_views)
            meta = gt_folder / "meta.pkl"
            size = gt_views.shape[1]
            poses, Ks = load_cameras(meta if meta.is_file() else None, n_views, size, cfg.get("rig"))
            if gt_views.shape[-1] == 4 and gt_views[..., 3].max() <= 0:
                raise ValueError("GT views have no foreground")
            gt_mesh = _gt_mesh(gt_dir, name, cfg) if set(metrics) & {"iou", "chamfer", "fscore"} else None
            gt_pts = None
            if set(metrics) & {"chamfer", "fscore"} and cfg.get("gt_points", "auto") in ("auto", "depth"):
                gt_pts = gt_points_from_depth(gt_folder, poses, Ks)
                if gt_pts is None and cfg.get("gt_points") == "depth":
                    raise ValueError("gt_points=depth but the GT depth maps NNN_depth.png are missing")
        except Exception as e:
            rows.append({"object": name, "sample": "-", "status": "failed", "error": f"ground truth: {_one_line(e)}"})
            log(f"[{name}] failed: {rows[-1]['error']}")
            continue
        if generate_fn is not None:
            for seed in cfg.get("seeds") or [0]:
                d = pred_dir / name / str(seed)
                if not (cfg.get("skip_existing", True) and d.is_dir() and any(d.iterdir())):
                    d.mkdir(parents=True, exist_ok=True)
                    try:
                        generate_fn(name, gt_folder / "000.png", d, int(seed))
                    except Exception as e:
                        rows.append({"object": name, "sample": str(seed), "status": "failed",
                                     "error": f"generate: {_one_line(e)}"})
        samples = find_samples(pred_dir, name)
        if cfg.get("seeds") and generate_fn is None and cfg.get("filter_seeds", False):
            samples = [s for s in samples if s.sample in {str(x) for x in cfg["seeds"]}]
        if not samples:
            rows.append({"object": name, "sample": "-", "status": "failed",
                         "error": f"no predicted views under {pred_dir}/{name}"})
            log(f"[{name}] failed: {rows[-1]['error']}")
            continue
        for s in samples:
            t0 = time.time()
            row = {"object": name, "sample": s.sample}
            errors = []
            pred_views = pred_mesh = None
            try:
                pred_views = load_views(s.views, n_views)
            except Exception as e:
                errors.append(f"views: {_one_line(e)}")
            try:
                if s.mesh is not None:
                    pred_mesh = geo.load_mesh(s.mesh)
                elif cfg.get("reconstruct") and pred_views is not None and set(metrics) & {"chamfer", "iou", "fscore"}:
                    rdir = out / "meshes" / name / s.sample
                    if reconstruct_fn is not None:
                        pred_mesh = reconstruct_fn(pred_views, poses, Ks, rdir)
                    else:
                        from syncdreamer.recon.pipeline import reconstruct_views
                        r = cfg.get("recon") or {}
                        pred_mesh = reconstruct_views(pred_views, poses, Ks, r, rdir, cfg.get("mask_source", "auto"),
                                                      device=cfg.get("device", "auto"), seed=int(cfg.get("seed", 0)),
                                                      turntable_format=None, formats=("ply",), log=None)["mesh"]
            except Exception as e:
                errors.append(f"mesh: {_one_line(e)}")
            res = evaluate_sample(pred_views, gt_views, pred_mesh=pred_mesh, gt_mesh=gt_mesh, gt_points=gt_pts,
                                  poses=poses, Ks=Ks, lpips_metric=lp, metrics=metrics,
                                  voxel=float(g.get("voxel", 0.01)), fscore_threshold=float(g.get("fscore_threshold", 0.02)),
                                  iou_resolution=int(g.get("iou_resolution", 64)), iou_bound=float(g.get("iou_bound", 0.6)),
                                  iou_fallback=bool(g.get("iou_fallback", True)),
                                  ssim_data_range=cfg.get("ssim_data_range"), depth_size=int(gt_views.shape[1]))
            errors += res.pop("errors")
            row.update(res)
            row["status"] = "failed" if errors else "ok"
            row["error"] = "; ".join(errors)
            row["seconds"] = round(time.time() - t0, 2)
            rows.append(row)
            log(f"[{name}/{s.sample}] " + "  ".join(f"{m} {row[m]:.4f}" for m in metrics if m in row)
                + (f"  FAILED: {row['error']}" if errors else ""))
            if run is not None:
                run.log({f"{name}/{m}": row[m] for m in metrics if m in row})
        log(f"[{name}] {time.time() - t_obj:.1f} s")
    summary = summarize([r for r in rows if r.get("sample") != "-"], metrics)
    summary["failed_objects"] = sorted({r["object"] for r in rows if r.get("status") == "failed"})
    files = {"csv": str(write_csv(rows, out / "metrics.csv"))}
    md = markdown_summary(summary, rows, metrics, cfg.get("title", "Benchmark"))
    (out / "summary.md").write_text(md)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    files.update(markdown=str(out / "summary.md"), json=str(out / "summary.json"))
    if run is not None:
        import wandb
        run.summary.update({f"mean/{k}": v for k, v in summary["mean"].items()})
        run.summary.update({f"std/{k}": v for k, v in summary["std"].items()})
        run.summary.update({f"best/{k}": v for k, v in summary["best"].items()})
        cols = ["object", "sample", "status", *metrics, "error"]
        run.log({"metrics": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
        run.finish()
    return {"rows": rows, "summary": summary, "files": files}
