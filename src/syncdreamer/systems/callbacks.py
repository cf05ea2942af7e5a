"""Lightning callbacks of the training system: speed / memory monitoring and the config inside checkpoints."""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["SpeedMonitor", "ConfigInCheckpoint"]


class SpeedMonitor(L.Callback):
    """Logs ``train/step_time_s``, ``train/samples_per_sec`` (global: batch x world size / step time) and, on
    CUDA, ``train/peak_mem_gib`` (``torch.cuda.max_memory_allocated`` since the start of training)."""

    def __init__(self, log_every_n_steps: int = 1):
        self.every = max(1, int(log_every_n_steps))
        self._t0 = None

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
        bs = int(batch["input_elevation"].shape[0]) * trainer.world_size
        metrics = {"train/step_time_s": dt, "train/samples_per_sec": bs / max(dt, 1e-9)}
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
