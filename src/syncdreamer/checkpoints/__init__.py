"""Loading checkpoints: the official SyncDreamer / Zero123 / OpenAI CLIP files and our own.

One documented entry point per file kind (the logic lives in the named modules; this package re-exports it):

* :func:`load_official_checkpoint` (:mod:`.official`) — ``syncdreamer-pretrain.ckpt`` (Lightning checkpoint,
  weights under ``"state_dict"`` in the official key layout) into a :class:`~syncdreamer.models.SyncDreamer`.
* :func:`init_from_zero123` (:mod:`.official`) — ``zero123-xl.ckpt``: the base UNet, the VAE,
  ``cc_projection`` and the schedule buffers; SyncDreamer's new modules keep their init.
* :func:`load_openai_clip` (:mod:`.official`) — OpenAI's ``ViT-L-14.pt`` into the CLIP image encoder.
* :func:`load_model` (:mod:`.ours`) — build a model from a config and load any of: the official checkpoint,
  one of our Lightning checkpoints (the resolved config and the EMA weights are stored inside), or a plain
  state dict / safetensors file. The one loader of generation, the app, evaluation and training resume.
* :func:`read_checkpoint` (:mod:`.safe_load`) — any of these files read without executing code; every
  problem is a :class:`CheckpointError` with a one-line message.
"""
from .official import (VAE_PREFIX, ZERO123_PREFIXES, init_from_zero123, load_official_checkpoint,
                       load_openai_clip, official_to_model_keys)
from .ours import build_model, ema_weights, load_model
from .safe_load import CheckpointError, check_and_load, read_checkpoint

__all__ = [
    "CheckpointError",
    "read_checkpoint",
    "check_and_load",
    "official_to_model_keys",
    "load_official_checkpoint",
    "init_from_zero123",
    "load_openai_clip",
    "load_model",
    "build_model",
    "ema_weights",
    "VAE_PREFIX",
    "ZERO123_PREFIXES",
]
