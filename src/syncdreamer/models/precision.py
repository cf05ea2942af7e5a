"""Numeric precision of the denoiser: which dtypes the hardware runs fast, and casting weights once.

``bf16`` keeps the weights of the matmul/conv layers in bfloat16 (cast once, not re-cast by autocast at
every call), runs the denoiser under ``torch.autocast`` so that mixed inputs meet, and leaves the norm
layers, the schedule and camera buffers, and all geometry (frustum points, grid_sample positions) in float32.
"""
from __future__ import annotations

import torch
import torch.nn as nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NORM_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.BatchNorm3d)


def bf16_is_fast(device: torch.device | str) -> bool:
    """True where bfloat16 matmuls run natively: a CUDA GPU with bf16, or a CPU with AMX or avx512_bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        amx = getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        avx512_bf16 = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        return bool(amx or avx512_bf16)
    return False


def default_precision(device: torch.device | str) -> str:
    """``bf16`` where :func:`bf16_is_fast`, else ``fp32``."""
    return "bf16" if bf16_is_fast(device) else "fp32"


def cast_weights(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the floating parameters of every non-norm layer of ``module`` to ``dtype`` in place (buffers and
    norm layers stay as they are). Returns ``module``."""
    for sub in module.modules():
        if isinstance(sub, NORM_LAYERS):
            continue
        for name, param in sub.named_parameters(recurse=False):
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
    return module


def to_channels_last(module: nn.Module, channels_last: bool = True) -> nn.Module:
    """Store Conv2d weights as channels_last and Conv3d weights as channels_last_3d (oneDNN / cuDNN NHWC
    kernels then keep activations in that layout instead of reordering at every call); ``channels_last=False``
    puts them back in the standard contiguous layout. Returns ``module``."""
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d)):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
        elif isinstance(sub, (nn.Conv3d, nn.ConvTranspose3d)):
            fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        else:
            continue
        sub.weight.data = sub.weight.data.contiguous(memory_format=fmt)
    return module


def autocast_or_null(device: torch.device | str, dtype: torch.dtype):
    """``torch.autocast(device, dtype)`` for a reduced dtype, else a null context."""
    import contextlib

    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
