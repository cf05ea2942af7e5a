"""The cluster path on a real (private, single-node) SLURM: the submitit sweep with quiet polling, the CPU
train.sbatch with 2 DDP tasks, the render array, time limits / preemption with requeue and exact resume, and
the templates' bad-input messages. The cluster comes from ``slurm_fixtures.slurm_cluster``."""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from slurm_fixtures import slurm_cluster  # noqa: F401  (the session fixture)

REPO = Path(__file__).resolve().parents[1]


def job_env(**extra) -> dict:
    """The environment the jobs inherit: this checkout's code first, quiet threads, no network."""
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p]), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    env.update(extra)
    return env


def smoke_overrides(data_root: Path, log_dir: Path, steps: int) -> list[str]:
    """experiment=smoke on the prepared renders of ``smoke_data`` (no Blender, no VAE warm-up), V = D = 8."""
    return ["experiment=smoke", f"paths.log_dir={log_dir}", f"data.root={data_root}", "data.prepare=null",
            "data.latent_cache=null", "data.train_list=train.txt", "data.val_list=val.txt", "vae_warmup.steps=0",
            "model.volume_resolution=8", "model.frustum_depth=8", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
            "system.validation.sample_steps=2"]


def csv_steps(run: Path) -> list[int]:
    """The steps of the training-loss rows of a run's CSV log."""
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """A prepared render folder for the smoke runs (3 objects at 64 px, train.txt / val.txt), shared by the jobs."""
    from test_datamodule import make_fake_renders
    from syncdreamer.data import layout

    root = tmp_path_factory.mktemp("smoke_renders")
    uids = make_fake_renders(root, 3, 64)
    layout.write_uid_list(root / "train.txt", uids[:2])
    layout.write_uid_list(root / "val.txt", uids[2:])
    return root


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("script,args", [("train.sbatch", ["experiment=smoke"]),
                                         ("render_array.sbatch", ["meshes", "renders"])])
def test_sbatch_templates_outside_slurm_stop_with_one_line(script, args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(REPO / "slurm" / script), *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "sbatch" in lines[0], proc.stderr


def test_train_sbatch_with_gpus_per_node_not_matching_the_allocation(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job = slurm_cluster.sbatch("--gres=none", "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=1G",
                               f"--output={out}", REPO / "slurm" / "train.sbatch", "experiment=smoke",
                               cwd=REPO, env=job_env(GPUS_PER_NODE="2"))
    states = slurm_cluster.wait(job, timeout=120)
    assert states == {job: "FAILED"}
    lines = out.read_text().splitlines()
    assert lines == ["error: GPUS_PER_NODE=2 but this job has 0 GPU(s) per node: submit with --gres=gpu:2 "
                     "--ntasks-per-node=2, set GPUS_PER_NODE=0, or GPUS_PER_NODE=0 for CPU tasks"] or (
        len(lines) == 1 and "GPUS_PER_NODE=0" in lines[0] and "--gres=gpu:2" in lines[0]), lines


# ---------------------------------------------------------------------------------------------- templates
@pytest.mark.slow
def test_render_array_two_tasks_share_four_meshes(slurm_cluster, tmp_path):
    from syncdreamer.data import procedural

    meshes = procedural.make_procedural_set(tmp_path / "meshes", 4, seed=0, formats=("glb",))
    uids = sorted(p.stem for p in meshes)
    renders = tmp_path / "renders"
    job = slurm_cluster.sbatch("--array=0-1", "--cpus-per-task=1", "--mem=2G",
                               f"--output={tmp_path}/slurm-render-%A_%a.out", REPO / "slurm" / "render_array.sbatch",
                               tmp_path / "meshes", renders, "renderer=cpu", "resolution=64", cwd=REPO, env=job_env())
    states = slurm_cluster.wait(job, timeout=600, tasks=2)
    assert sorted(states.values()) == ["COMPLETED", "COMPLETED"], states
    for uid in uids:
        for rig in ("target", "input"):
            assert len(list((renders / rig / uid).glob("[0-9][0-9][0-9].png"))) == 16, (rig, uid)
    for k in range(2):  # each task rendered its own half: shard k = uids[k::2]
        log = (tmp_path / f"slurm-render-{job}_{k}.out").read_text()
        assert f"shard {k}/2" in log
        assert "rendering 2 objects" in log or "2 rendered" in log, log[-2000:]
        for uid in uids[k::2]:
            assert (renders / "target" / uid).is_dir()
    assert not (renders / "failures.jsonl").is_file() or not (renders / "failures.jsonl").read_text().strip()


# ---------------------------------------------------------------------------------------------- training
def sweep_args(smoke_data: Path, log_dir: Path, steps: int, *extra) -> list[str]:
    """``python train.py -m experiment=smoke ... hydra/launcher=submitit_slurm`` on the CPU node."""
    return [sys.executable, str(REPO / "train.py"), "-m", *smoke_overrides(smoke_data, log_dir, steps),
            "hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=1",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4", "hydra.launcher.timeout_min=20", *extra]


@pytest.mark.slow
def test_submitit_sweep_runs_both_points_and_states_the_sacct_warning_once(slurm_cluster, smoke_data, tmp_path):
    logs = tmp_path / "logs"
    proc = slurm_cluster.run(*sweep_args(smoke_data, logs, 3, "model.volume_resolution=8,16"), cwd=tmp_path,
                             env=job_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = next((logs / "train" / "multiruns" / "smoke").iterdir())
    for job, v in zip(sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")), (8, 16)):
        assert OmegaConf.load(job / ".hydra" / "config.yaml").model.volume_resolution == v
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 3 and ckpt["config"]["model"]["volume_resolution"] == v
    output = proc.stdout + proc.stderr  # no accounting here: sacct fails on every call
    assert "Bypassing sacct error" not in output, output[-3000:]
    assert output.count("Slurm accounting storage is disabled") <= 1, output[-3000:]  # (quoted in the one line)
    assert output.count("sacct cannot report job states here") == 1, output[-3000:]


@pytest.mark.slow
def test_train_sbatch_on_cpu_with_two_ddp_tasks(slurm_cluster, smoke_data, tmp_path):
    out, run = tmp_path / "job.out", tmp_path / "run"
    job = slurm_cluster.sbatch("--gres=none", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=8G", "--time=20",
                               f"--output={out}", REPO / "slurm" / "train.sbatch",
                               *smoke_overrides(smoke_data, tmp_path / "logs", 3), "trainer.strategy=ddp",
                               "data.batch_size=1", cwd=REPO, env=job_env(GPUS_PER_NODE="0", RUN_DIR=str(run)))
    states = slurm_cluster.wait(job, timeout=900)
    log = out.read_text()
    assert states == {job: "COMPLETED"}, log[-3000:]
    assert "2 task(s), 0 GPU(s) per node" in log
    for rank in (0, 1):  # both ranks trained: each states its part of the global batch
        assert f"rank {rank} of 2: batch 1, global batch 2" in log, log[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        batches = {float(r["train/global_batch"]) for r in csv.DictReader(f) if r.get("train/global_batch")}
    assert batches == {2.0}


@pytest.mark.slow
def test_submitit_time_limit_requeues_and_resumes_exactly(slurm_cluster, smoke_data, tmp_path):
    """timeout_min=2, signal_delay_s=30: each attempt is signalled, writes last.ckpt, is requeued, resumes.

    SLURM signals an attempt 60-90 s after it starts, so 2 attempts train for at most ~150 s: the step count is
    240 s of training at the pace measured on this machine, so at least 3 attempts run unless the sweep trains
    1.5x faster than the calibration run (with 150 s, a CI run on 2026-12-07 finished its 136 steps in 2 attempts)."""
    calib = tmp_path / "calib"
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *smoke_overrides(smoke_data, tmp_path, 5),
                           f"hydra.run.dir={calib}", "logger=csv"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=900, env={**os.environ, **job_env()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (calib / "csv" / "metrics.csv").open(newline="") as f:
        times = sorted(float(r["train/step_time_s"]) for r in csv.DictReader(f) if r.get("train/step_time_s"))[1:]
    steps = max(16, int(240 / times[len(times) // 2]) // 8 * 8)
    logs = tmp_path / "logs"
    proc = slurm_cluster.run(*sweep_args(smoke_data, logs, steps, "hydra.launcher.timeout_min=2",
                                         "hydra.launcher.signal_delay_s=30", "hydra.launcher.max_num_timeout=12",
                                         f"callbacks.model_checkpoint.every_n_train_steps={steps // 8}",
                                         f"callbacks.periodic_checkpoint.every_n_train_steps={steps // 4}"),
                             cwd=tmp_path, env=job_env(), timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = next((logs / "train" / "multiruns" / "smoke").iterdir())
    run = sweep / "0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == steps
    logged = csv_steps(run)
    assert logged == list(range(steps)), [s for s in range(steps) if logged.count(s) != 1]
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt"] + [f"step{s:07d}.ckpt" for s in range(steps // 4, steps + 1, steps // 4)], names
    job_log = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.out"))
    # submitit logs each requeue through its own handler and again through Hydra's: count distinct requeues
    requeues = len(set(re.findall(r"Requeued job \S+ \((\d+) remaining timeouts\)", job_log)))
    assert requeues >= 2, job_log[-3000:]
    assert job_log.count("requeued attempt") == requeues
    print(f"requeue test: {steps} steps, {requeues} requeues")


@pytest.mark.slow
def test_train_sbatch_warning_signal_and_preemption_resume_exactly(slurm_cluster, smoke_data, tmp_path):
    """slurm/train.sbatch (--requeue): SIGUSR1 (the time-limit warning) checkpoints and requeues; `scontrol
    requeue` (preemption: SIGTERM) checkpoints between steps; both attempts resume from last.ckpt."""
    steps = 60
    out, run = tmp_path / "job.out", tmp_path / "run"
    job = slurm_cluster.sbatch("--gres=none", "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=4G", "--time=30",
                               f"--output={out}", REPO / "slurm" / "train.sbatch",
                               *smoke_overrides(smoke_data, tmp_path / "logs", steps),
                               "callbacks.model_checkpoint.every_n_train_steps=10",
                               "callbacks.periodic_checkpoint.every_n_train_steps=20",
                               cwd=REPO, env=job_env(GPUS_PER_NODE="0", RUN_DIR=str(run)))

    def wait_for_attempt(n: int) -> None:  # the n-th attempt has trained its first step
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if out.is_file() and out.read_text().count("rank 0 of 1:") >= n:
                return
            time.sleep(1)
        raise AssertionError(out.read_text()[-3000:] if out.is_file() else "no job output")

    wait_for_attempt(1)
    assert slurm_cluster.run("scancel", "--signal=USR1", job).returncode == 0
    wait_for_attempt(2)
    assert slurm_cluster.run("scontrol", "requeue", job).returncode == 0
    states = slurm_cluster.wait(job, timeout=900)
    log = out.read_text()
    assert states == {job: "COMPLETED"}, log[-3000:]
    assert "on SIGUSR1" in log and "on SIGTERM" in log, log[-3000:]
    assert log.count("requeued attempt") == 2 and slurm_cluster.requeues(job) == 2, log[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == steps
    logged = csv_steps(run)
    assert logged == list(range(steps)), [s for s in range(steps) if logged.count(s) != 1]


# ---------------------------------------------------------------------------------------------- in-process
class _SignalAt(__import__("lightning").Callback):
    """Sends this process ``signum`` when step ``step`` ends (as SLURM would, at any moment)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_warning_signal_checkpoints_hands_over_to_the_requeue_handler_and_the_requeued_attempt_resumes(
        smoke_data, tmp_path, monkeypatch):
    """No SLURM needed: SIGUSR2 after step 3 with a submitit-like handler installed; the attempt writes
    last.ckpt at step 3 and calls that handler; attempt 2 (SLURM_RESTART_COUNT=1) resumes to max_steps."""
    import signal

    import syncdreamer.systems.runner as runner
    from test_train_run import compose_cfg

    calls = []

    def submitit_like(signum, frame):  # submitit: dump the submission, scontrol requeue, sys.exit(-1)
        calls.append(signum)
        raise SystemExit(-1)

    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    old = signal.signal(signal.SIGUSR2, submitit_like)
    over = [o for o in smoke_overrides(smoke_data, tmp_path / "logs", 6)] + [
        f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path / 'run'}", "logger=csv", "callbacks.model_checkpoint.every_n_train_steps=4",
        "callbacks.periodic_checkpoint.every_n_train_steps=2"]
    orig = runner.instantiate_callbacks
    try:
        monkeypatch.setattr(runner, "instantiate_callbacks", lambda c: orig(c) + [_SignalAt(3, signal.SIGUSR2)])
        with pytest.raises(SystemExit):
            runner.train(compose_cfg(over))
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is submitit_like  # handlers restored after the attempt
        last = tmp_path / "run" / "checkpoints" / "last.ckpt"
        assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
        assert csv_steps(tmp_path / "run") == [0, 1, 2]
        monkeypatch.setattr(runner, "instantiate_callbacks", orig)
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        metrics = runner.train(compose_cfg(over))
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert metrics["global_step"] == 6
    assert csv_steps(tmp_path / "run") == list(range(6))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt", "step0000006.ckpt"]


def test_requeue_resume_path_only_on_a_requeued_attempt(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from syncdreamer.systems.runner import requeue_resume_path

    cfg = OmegaConf.create({"ckpt_path": None, "callbacks": {"m": {
        "_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": str(tmp_path), "save_last": True}}})
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert requeue_resume_path(cfg) is None  # a first attempt never resumes by itself
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert requeue_resume_path(cfg) == str(tmp_path / "last.ckpt")
    cfg.ckpt_path = "/explicit.ckpt"
    assert requeue_resume_path(cfg) is None  # an explicit ckpt_path wins
    cfg.ckpt_path = None
    (tmp_path / "last.ckpt").unlink()
    assert requeue_resume_path(cfg) is None  # nothing saved yet: start from step 0
