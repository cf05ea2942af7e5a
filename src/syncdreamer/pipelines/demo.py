"""The end-to-end demo behind ``make demo``: data -> training -> generation -> reconstruction -> evaluation.

Every stage runs the project's own entry point (``train.py``, ``generate.py``, ``reconstruct.py``,
``evaluate.py``) as a subprocess with the overrides in ``conf/demo.yaml``, so the demo exercises exactly the
commands the README shows. The stages print their own progress; this driver prints ``[demo k/5]`` headers
with timings and finally writes ``<output_dir>/report.html`` (:mod:`syncdreamer.pipelines.report`).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .report import write_report

STAGES = ("train", "generate", "reconstruct", "evaluate", "report")


class DemoError(RuntimeError):
    """A stage failed; the message says which and where its log is."""


@dataclass
class DemoState:
    out: Path
    repo: Path
    timings: dict = field(default_factory=dict)
    train_dir: Path | None = None
    checkpoint: Path | None = None
    data_root: Path | None = None
    uid: str | None = None
    input_png: Path | None = None
    elevation_deg: float | None = None
    views_dir: Path | None = None
    recon_dir: Path | None = None
    eval_dir: Path | None = None


def _run(state: DemoState, stage: str, script: str, overrides: list[str], ok_codes: tuple = (0,)) -> int:
    """Run ``python <script> <overrides>`` in the repository root; stream its output; fail with one line."""
    cmd = [sys.executable, str(state.repo / script), *overrides]
    log = state.out / "logs" / f"{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ python {script} {' '.join(overrides)}", flush=True)
    with open(log, "w") as fh:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        env.setdefault("WANDB_MODE", "offline")
        proc = subprocess.Popen(cmd, cwd=state.repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=env)
        for line in proc.stdout:  # tee: progress bars and step counters stay visible
            fh.write(line)
            sys.stdout.write("    " + line if not line.startswith("\r") else line)
            sys.stdout.flush()
        code = proc.wait()
    if code not in ok_codes:
        raise DemoError(f"stage '{stage}' failed (exit {code}); see {log}")
    return code


def stage_train(state: DemoState, cfg) -> None:
    state.train_dir = state.out / "train"
    if cfg.reuse_training and (state.train_dir / "checkpoints" / "last.ckpt").exists():
        print("  reusing the trained checkpoint (reuse_training=true)")
    else:
        if state.train_dir.exists():
            shutil.rmtree(state.train_dir)
        _run(state, "train", "train.py", [f"hydra.run.dir={state.train_dir}", *cfg.train_overrides])
    state.checkpoint = state.train_dir / "checkpoints" / "last.ckpt"
    if not state.checkpoint.exists():
        raise DemoError(f"training wrote no checkpoint at {state.checkpoint}")
    resolved = (state.train_dir / ".hydra" / "config.yaml")
    from omegaconf import OmegaConf

    train_cfg = OmegaConf.load(resolved)
    state.data_root = Path(str(train_cfg.data.root))
    if not state.data_root.is_absolute():
        state.data_root = state.repo / state.data_root


def _held_out(state: DemoState, cfg) -> None:
    val_list = state.data_root / "val_uids.txt"
    uids = [u.strip() for u in val_list.read_text().splitlines() if u.strip()] if val_list.exists() else []
    if not uids:
        raise DemoError(f"no held-out object listed in {val_list}")
    state.uid = cfg.object or uids[0]
    index = int(cfg.input_view)
    state.input_png = state.data_root / "input" / state.uid / f"{index:03d}.png"
    import math

    from ..data.meta import read_meta

    meta = read_meta(state.data_root / "input" / state.uid / "meta.pkl")  # restricted: never runs code
    state.elevation_deg = round(math.degrees(float(meta["elevations"][index])), 3)


def stage_generate(state: DemoState, cfg) -> None:
    _held_out(state, cfg)
    gen_root = state.out / "generate"
    named = state.out / "inputs" / f"{state.uid}.png"  # the output folder is named after the input file
    named.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(state.input_png, named)
    _run(state, "generate", "generate.py", [
        f"checkpoint={state.checkpoint}", f"input={named}", f"elevation={state.elevation_deg}",
        f"output_dir={gen_root}", *cfg.generate_overrides])
    state.views_dir = gen_root / state.uid
    if not (state.views_dir / "000.png").exists():
        raise DemoError(f"generation wrote no views in {state.views_dir}")


def stage_reconstruct(state: DemoState, cfg) -> None:
    state.recon_dir = state.out / "reconstruct"
    _run(state, "reconstruct", "reconstruct.py", [
        f"views={state.views_dir}", f"output_dir={state.recon_dir}", f"cameras={state.views_dir / 'cameras.json'}",
        *cfg.reconstruct_overrides])


def stage_evaluate(state: DemoState, cfg) -> None:
    pred = state.out / "predictions" / state.uid
    if pred.exists():
        shutil.rmtree(pred)
    pred.mkdir(parents=True)
    for i in range(16):
        src = state.views_dir / f"{i:03d}.png"
        if src.exists():
            shutil.copy(src, pred / src.name)
    mesh = next(iter(sorted(state.recon_dir.glob("*.ply"))), None)
    if mesh is not None:
        shutil.copy(mesh, pred / "mesh.ply")
    # provenance for summary.md: sampler, steps, cfg, seed (cameras.json) and the NeuS preset (recon.json)
    for info in (state.views_dir / "cameras.json", state.recon_dir / "recon.json"):
        if info.is_file():
            shutil.copy(info, pred / info.name)
    state.eval_dir = state.out / "evaluate"
    metrics = list(cfg.metrics)
    if "lpips" in metrics and not _lpips_weights_present():
        print("  LPIPS skipped: VGG weights are not in the torch hub cache (see README, 'Weights')")
        metrics.remove("lpips")
    # exit 1 = some metric failed for the object (recorded in metrics.csv, shown in the report)
    code = _run(state, "evaluate", "evaluate.py", [
        f"gt_dir={state.data_root}", f"predictions_dir={state.out / 'predictions'}", f"objects=[{state.uid}]",
        f"output_dir={state.eval_dir}", f"metrics=[{','.join(metrics)}]", *cfg.evaluate_overrides], ok_codes=(0, 1))
    if not (state.eval_dir / "metrics.csv").exists():
        raise DemoError(f"evaluation wrote no metrics.csv in {state.eval_dir}")
    if code:
        print("  some metrics failed for this object; the report lists why")


def _lpips_weights_present() -> bool:
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth").exists()


def run_demo(cfg) -> Path:
    """Run every stage of ``cfg`` (conf/demo.yaml) and return the path of ``report.html``."""
    repo = Path(cfg.repo_dir).resolve()
    out = Path(cfg.output_dir)
    out = (out if out.is_absolute() else repo / out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state = DemoState(out=out, repo=repo)
    steps = [("train", "training the tiny model (experiment=proxy, short cut; renders its data with Blender on first use)",
              stage_train),
             ("generate", "generating 16 views of a held-out object", stage_generate),
             ("reconstruct", "reconstructing a mesh with NeuS (fast preset)", stage_reconstruct),
             ("evaluate", "evaluating views and mesh against the ground truth", stage_evaluate)]
    t_all = time.time()
    for k, (name, what, fn) in enumerate(steps, 1):
        print(f"\n[demo {k}/{len(steps) + 1}] {what}", flush=True)
        t0 = time.time()
        fn(state, cfg)
        state.timings[name] = time.time() - t0
        print(f"[demo {k}/{len(steps) + 1}] {name} done in {state.timings[name]:.0f} s", flush=True)
    print(f"\n[demo {len(steps) + 1}/{len(steps) + 1}] writing the report", flush=True)
    state.timings["total"] = time.time() - t_all
    report = write_report(state, out / "report.html")
    (out / "demo.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                               for k, v in state.__dict__.items()}, indent=2, default=str))
    return report
