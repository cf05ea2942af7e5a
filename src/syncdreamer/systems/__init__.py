"""LightningModules that wire the plain ``nn.Module`` networks, the diffusion objective and the optimisers.

:class:`SyncDreamerSystem` trains SyncDreamer; :func:`~syncdreamer.systems.runner.train` is the run behind
``train.py``; :func:`load_model_from_checkpoint` rebuilds a trained model from one of our checkpoints.
"""
from .callbacks import ConfigInCheckpoint, SpeedMonitor
from .ema import ParameterEMA
from .syncdreamer_system import Draws, OptimConfig, SyncDreamerSystem, ValidationConfig, warmup_factor
from .runner import ConfigError, check_config, load_model_from_checkpoint, train

__all__ = ["SyncDreamerSystem", "Draws", "OptimConfig", "ValidationConfig", "warmup_factor", "ParameterEMA",
           "SpeedMonitor", "ConfigInCheckpoint", "ConfigError", "check_config", "load_model_from_checkpoint",
           "train"]
