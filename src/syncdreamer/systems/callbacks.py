"""Lightning callbacks of the training system: speed / memory monitoring, the config inside checkpoints, and
the checkpoint + requeue on SLURM's warning signal."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["SpeedMonitor", "ConfigInCheckpoint", "CheckpointOnSignal"]

log = logging.getLogger(__name__)


class SpeedMonitor(L.Callback):
    """Logs ``train/step_time_s``, ``train/samples_per_sec`` (global: batch x world size / step time),
    ``train/global_batch`` (batch x world size) and, on CUDA, ``train/peak_mem_gib``
    (``torch.cuda.max_memory_allocated`` since the start of training). Every rank states its part once
    ("rank r of W: batch b, global batch b*W") at its first step."""

    def __init__(self, log_every_n_steps: int = 1):
        self.every = max(1, int(log_every_n_steps))
        self._t0 = None
        self._announced = False

    def on_train_start(self, trainer, pl_module) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None or trainer.global_step % self.every:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        dt = time.perf_counter() - self._t0
        local = int(batch["input_elevation"].shape[0])
        bs = local * trainer.world_size
        if not self._announced:
            self._announced = True
            print(f"rank {trainer.global_rank} of {trainer.world_size}: batch {local}, global batch {bs}", flush=True)
        metrics = {"train/step_time_s": dt, "train/samples_per_sec": bs / max(dt, 1e-9), "train/global_batch": float(bs)}
        if pl_module.device.type == "cuda":
            metrics["train/peak_mem_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2 ** 30
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=bs)


class ConfigInCheckpoint(L.Callback):
    """Puts the resolved run config into every checkpoint (``checkpoint["config"]``) and writes
    ``config.yaml`` next to the checkpoints, so a checkpoint folder is self-describing."""

    def __init__(self, config: dict, filename: str = "config.yaml"):
        self.config, self.filename = config, filename

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        from omegaconf import OmegaConf

        dirs = {cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath}
        for d in dirs:
            Path(d).mkdir(parents=True, exist_ok=True)
            OmegaConf.save(OmegaConf.create(self.config), Path(d) / self.filename)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["config"] = self.config


class CheckpointOnSignal(Checkpoint):
    """Saves ``last.ckpt`` on SLURM's warning signal and requeues the job, which then resumes from it.

    SLURM sends the signal ahead of the time limit (``#SBATCH --signal=USR1@120`` in slurm/train.sbatch,
    ``hydra.launcher.signal_delay_s`` with submitit, which uses USR2) and on preemption. The handler only
    records it; at the start of the next batch (so the previous step, its log row and its periodic
    checkpoints are complete) every rank agrees to stop, ``last.ckpt`` of the ModelCheckpoint with
    ``save_last`` is written, the loggers are flushed, and the job is requeued: through the handler that was
    installed before (submitit's, which counts ``max_num_timeout``, requeues and exits) or else by rank 0 with
    ``scontrol requeue <job>``. The requeued attempt finds ``last.ckpt`` in the same run folder
    (:func:`syncdreamer.systems.runner.requeue_resume_path`). Lightning's own SLURM auto-requeue is not used:
    it saves from inside the signal handler, in the middle of a step.

    SIGTERM (``scontrol requeue``, preemption without a user signal, ``scancel``; SLURM sends SIGKILL
    ``KillWait`` seconds later) also writes ``last.ckpt`` between steps, without requeueing: SLURM has
    requeued the job already, or ends it.

    A :class:`~lightning.pytorch.callbacks.Checkpoint` so that Lightning runs it after the other callbacks.
    """

    def __init__(self, signals=("SIGUSR1", "SIGUSR2", "SIGTERM"), requeue: bool = True):
        self.signals = [getattr(signal, s) if isinstance(s, str) else signal.Signals(s) for s in signals]
        self.requeue = requeue
        self.received: int | None = None
        self._previous: dict = {}

    # -- signal handling (install before trainer.fit so that Lightning keeps its hands off these signals)
    def install(self) -> "CheckpointOnSignal":
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        if self.received is None or signum != signal.SIGTERM:
            self.received = signum  # act between steps, not here
        what = "exit" if signum == signal.SIGTERM else "requeue"
        os.write(2, f"received {signal.Signals(signum).name}: checkpoint and {what} after this step\n".encode())
        previous = self._previous.get(signum)
        if signum == signal.SIGTERM and callable(previous):
            previous(signum, frame)

    # -- between steps
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        self._checkpoint(trainer)
        if self.received == signal.SIGTERM or self.received is None:
            sys.exit(143)  # SLURM requeues or ends the job itself
        if self.requeue:
            self.requeue_job(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Lightning restores a mid-epoch checkpoint as one written at the end of a batch, before its logging
        step counter moves on, and adds 1 to ``_batches_that_stepped``; ours is written at the start of the
        next batch (counter already moved): store it one lower, so the resumed run logs each step once."""
        if getattr(self, "_saving", False) and trainer.state.fn == "fit":
            loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
            if "_batches_that_stepped" in loop:
                loop["_batches_that_stepped"] -= 1

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Lightning's own SIGTERM handling (DDP) stops at the start of a step: the state is whole, save it."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and self.received is not None and trainer.state.fn == "fit":
            self._checkpoint(trainer)

    def _checkpoint(self, trainer) -> None:
        path = self.save_last(trainer)
        for lg in trainer.loggers:
            lg.save()
        name = signal.Signals(self.received).name if self.received is not None else "SIGTERM"
        print(f"saved {path} at step {trainer.global_step} on {name}", flush=True)

    def save_last(self, trainer) -> str | None:
        """Writes ``last.ckpt`` of the ModelCheckpoint with ``save_last`` (all ranks take part)."""
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath:
                path = os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
                cb.last_model_path = path  # its state in the checkpoint names this file (no last-v1.ckpt later)
                self._saving = True
                try:
                    trainer.save_checkpoint(path)
                finally:
                    self._saving = False
                return path
        log.warning("no ModelCheckpoint with save_last: the requeued job will start from scratch")
        return None

    def requeue_job(self, trainer) -> None:
        """Requeues this SLURM job and ends this attempt (never returns)."""
        signum = self.received
        previous = self._previous.get(signum)
        if callable(previous):  # submitit's handler: checkpoints its submission, requeues, sys.exit()
            previous(signum, None)
        elif trainer.is_global_zero:
            job = os.environ.get("SLURM_JOB_ID")
            if os.environ.get("SLURM_ARRAY_JOB_ID"):
                job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            if job:
                proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                print(f"requeue of SLURM job {job}: " + ("done" if proc.returncode == 0 else proc.stderr.strip()),
                      flush=True)
        # every rank: wait for SLURM to end the job (the requeue stops all tasks), or leave after a while
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(1)
        sys.exit(1)
