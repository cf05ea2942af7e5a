"""CLIP image embedder of SyncDreamer (the official ``FrozenCLIPImageEmbedder``) and a safe OpenAI CLIP reader.

:class:`CLIPImageEmbedder` maps an image in [-1, 1] to the *raw* projected CLIP image embedding, one token:
``(B, 3, H, W) -> (B, 1, output_dim)``. Preprocessing is bicubic resizing to ``image_size`` with
``align_corners=True`` and no antialiasing, then ``(x + 1) / 2`` and the CLIP mean/std. The vision tower is
open_clip's :class:`~open_clip.transformer.VisionTransformer` with QuickGELU, whose ``visual.*`` keys equal
OpenAI's. ``CLIPImageEmbedder.state_dict()`` keys are exactly the official checkpoint's keys under
``clip_image_encoder.model.`` (the visual tower plus the text-side tensors that the official code keeps after
deleting the text transformer).

:func:`load_openai_clip_state_dict` reads OpenAI's ``ViT-L-14.pt`` (a TorchScript archive) without running
any code from it: the archive's ``data.pkl`` is read by a restricted unpickler that only rebuilds tensors.
"""
from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from open_clip.transformer import QuickGELU, VisionTransformer

__all__ = ["CLIPImageEmbedder", "OpenAICLIPImageTower", "load_openai_clip_state_dict",
           "OFFICIAL_CLIP_PREFIX", "CLIP_MEAN", "CLIP_STD"]

#: Prefix of the CLIP keys inside the official SyncDreamer checkpoint.
OFFICIAL_CLIP_PREFIX = "clip_image_encoder.model."
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Tensors in OpenAI's JIT archives that are metadata, not weights (OpenAI's ``build_model`` drops them too).
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


class OpenAICLIPImageTower(nn.Module):
    """OpenAI CLIP with the text transformer removed: ``visual`` plus the unused text-side tensors.

    Holds exactly the parameters the official SyncDreamer checkpoint stores under ``clip_image_encoder.model.``:
    ``visual.*`` (open_clip ``VisionTransformer``, OpenAI layout), ``token_embedding.weight``
    (vocab_size, transformer_width), ``positional_embedding`` (context_length, transformer_width),
    ``ln_final.{weight,bias}`` (transformer_width), ``text_projection`` (transformer_width, embed_dim) and
    ``logit_scale`` (). The text-side tensors are frozen and never used.

    ``forward(image)``: (B, 3, image_size, image_size) normalised pixels -> (B, output_dim) projected embedding.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 14, width: int = 1024, layers: int = 24,
                 heads: int | None = None, mlp_ratio: float = 4.0, output_dim: int = 768,
                 vocab_size: int = 49408, context_length: int = 77, transformer_width: int = 768,
                 embed_dim: int | None = None):
        super().__init__()
        heads = width // 64 if heads is None else heads
        if heads <= 0 or width % heads:
            raise ValueError(f"OpenAICLIPImageTower: width {width} must be a positive multiple of heads {heads}")
        if image_size % patch_size:
            raise ValueError(f"OpenAICLIPImageTower: image_size {image_size} must be divisible by "
                             f"patch_size {patch_size}")
        embed_dim = output_dim if embed_dim is None else embed_dim
        self.visual = VisionTransformer(image_size=image_size, patch_size=patch_size, width=width, layers=layers,
                                        heads=heads, mlp_ratio=mlp_ratio, output_dim=output_dim,
                                        act_layer=QuickGELU)
        # Text-side leftovers (OpenAI init; the official code keeps them in its checkpoint but never uses them).
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = nn.LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.full((), math.log(1 / 0.07)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=transformer_width ** -0.5)
        for module in (self.token_embedding, self.ln_final):
            module.requires_grad_(False)
        for p in (self.positional_embedding, self.text_projection, self.logit_scale):
            p.requires_grad_(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised image -> (B, output_dim), OpenAI's ``encode_image``."""
        return self.visual(image)


class CLIPImageEmbedder(nn.Module):
    """SyncDreamer's ``FrozenCLIPImageEmbedder``: image in [-1, 1] -> raw CLIP embedding token.

    Args:
        image_size, patch_size, width, layers, heads (default ``width // 64``), mlp_ratio, output_dim:
            the ViT vision tower (defaults: OpenAI ViT-L/14).
        vocab_size, context_length, transformer_width, embed_dim (default ``output_dim``): sizes of the
            text-side tensors kept for checkpoint compatibility.
        mean, std: CLIP pixel statistics (non-persistent buffers).
        frozen: ``requires_grad=False`` for every parameter (the official module is frozen).

    Attribute ``model`` is an :class:`OpenAICLIPImageTower`; state-dict keys are ``model.*``.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 14, width: int = 1024, layers: int = 24,
                 heads: int | None = None, mlp_ratio: float = 4.0, output_dim: int = 768,
                 vocab_size: int = 49408, context_length: int = 77, transformer_width: int = 768,
                 embed_dim: int | None = None, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 frozen: bool = True):
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"CLIPImageEmbedder: mean/std need 3 entries and std > 0, got {mean}, {std}")
        self.image_size = int(image_size)
        self.output_dim = int(output_dim)
        self.model = OpenAICLIPImageTower(image_size=image_size, patch_size=patch_size, width=width,
                                          layers=layers, heads=heads, mlp_ratio=mlp_ratio, output_dim=output_dim,
                                          vocab_size=vocab_size, context_length=context_length,
                                          transformer_width=transformer_width, embed_dim=embed_dim)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if frozen:
            self.requires_grad_(False)

    @classmethod
    def from_openai_constructor(cls, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                                vision_patch_size: int, context_length: int, vocab_size: int,
                                transformer_width: int, mean: Sequence[float] = CLIP_MEAN,
                                std: Sequence[float] = CLIP_STD, frozen: bool = True,
                                **unused_text_args) -> "CLIPImageEmbedder":
        """Build from the arguments of OpenAI's ``clip.model.CLIP`` (the text transformer's heads/layers are
        ignored because the text transformer is not kept)."""
        unknown = set(unused_text_args) - {"transformer_heads", "transformer_layers"}
        if unknown:
            raise ValueError(f"CLIPImageEmbedder.from_openai_constructor: unknown arguments {sorted(unknown)}")
        return cls(image_size=image_resolution, patch_size=vision_patch_size, width=vision_width,
                   layers=vision_layers, output_dim=embed_dim, vocab_size=vocab_size,
                   context_length=context_length, transformer_width=transformer_width, embed_dim=embed_dim,
                   mean=mean, std=std, frozen=frozen)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) CLIP input: bicubic resize (align_corners=True, no
        antialias), ``(x + 1) / 2``, ``(x - mean) / std``."""
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"CLIPImageEmbedder: expected a float image batch (B,3,H,W) in [-1,1], got "
                             f"{(tuple(x.shape), x.dtype) if torch.is_tensor(x) else type(x).__name__}")
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=True,
                          antialias=False)
        x = (x + 1.0) / 2.0
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 1, output_dim) float32 projected embedding, NOT L2-normalised."""
        dtype = self.model.visual.conv1.weight.dtype
        return self.model(self.preprocess(x).to(dtype)).float().unsqueeze(1)

    def load_openai_checkpoint(self, path: str | Path) -> None:
        """Load OpenAI CLIP weights (``ViT-L-14.pt`` JIT archive or a plain state dict) strictly, dropping the
        text transformer (``transformer.*``) as the official code does."""
        sd = load_openai_clip_state_dict(path)
        sd = {k: v for k, v in sd.items() if not k.startswith("transformer.")}
        own = self.model.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        shapes = [f"{k} {tuple(sd[k].shape)} vs ours {tuple(own[k].shape)}" for k in sorted(set(own) & set(sd))
                  if sd[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"CLIPImageEmbedder: {path} does not fit this model: missing {missing[:6]}, "
                             f"unexpected {unexpected[:6]}, shape mismatches {shapes[:4]}")
        self.model.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------------------
# Reading OpenAI's TorchScript archive without executing it

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stand-in for a pickled TorchScript module: only records its attribute dict (no code runs)."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected TorchScript object state of type {type(state).__name__}")
        self.state = state


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _RestrictedTorchScriptUnpickler(pickle.Unpickler):
    """Unpickler for a TorchScript ``data.pkl`` that allows only tensor rebuilding and module records."""

    def __init__(self, data: bytes, read_record):
        super().__init__(io.BytesIO(data))
        self._read_record = read_record
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            raw = self._read_record(str(key))
            flat = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else \
                torch.empty(0, dtype=storage_type.dtype)
            if flat.numel() < numel:
                raise pickle.UnpicklingError(f"storage {key} holds {flat.numel()} elements, expected {numel}")
            self._storages[key] = flat
        return self._storages[key]


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    if not torch.is_tensor(storage):
        raise pickle.UnpicklingError("tensor without storage")
    t = torch.as_strided(storage, tuple(size), tuple(stride), int(storage_offset))
    if int(storage_offset) == 0 and t.numel() == storage.numel() and t.is_contiguous():
        return t  # the whole storage: no copy
    return t.clone()


def _collect_tensors(obj, prefix: str, out: dict, depth: int = 0) -> None:
    if depth > 64:
        raise ValueError("TorchScript module tree nested too deeply")
    for name, value in getattr(obj, "state", {}).items():
        if torch.is_tensor(value):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect_tensors(value, f"{prefix}{name}.", out, depth + 1)


def _read_torchscript_zip(path: Path, zf: zipfile.ZipFile) -> dict[str, torch.Tensor]:
    names = zf.namelist()
    data_pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(data_pkl) != 1:
        raise ValueError(f"{path}: not a TorchScript archive (no single <name>/data.pkl)")
    root = data_pkl[0].rpartition("/")[0]
    if f"{root}/byteorder" in names and zf.read(f"{root}/byteorder").strip() not in (b"little", b""):
        raise ValueError(f"{path}: big-endian TorchScript archives are not supported")
    unpickler = _RestrictedTorchScriptUnpickler(zf.read(data_pkl[0]),
                                                lambda key: zf.read(f"{root}/data/{key}"))
    try:
        top = unpickler.load()
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: cannot read TorchScript weights safely: {err}") from None
    if not isinstance(top, _ScriptObject):
        raise ValueError(f"{path}: TorchScript data.pkl does not hold a module")
    out: dict[str, torch.Tensor] = {}
    _collect_tensors(top, "", out)
    return out


def load_openai_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict of an OpenAI CLIP checkpoint, read without executing code from the file.

    Accepts OpenAI's TorchScript archive (``ViT-L-14.pt``, the file ``clip`` downloads: its tensors are read by
    a restricted unpickler, never ``torch.jit.load``), a plain state dict saved with ``torch.save``
    (``weights_only=True``; a ``{"state_dict": ...}`` wrapper is unwrapped) or a ``.safetensors`` file.
    Keys are OpenAI's (``visual.conv1.weight``, ``transformer.resblocks.0...``, ``logit_scale``, ...); the
    metadata tensors ``input_resolution``, ``context_length``, ``vocab_size`` are dropped. Tensors keep the
    stored dtype (OpenAI's archives are float16).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable checkpoint of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP checkpoint not found: {path} (put OpenAI's ViT-L-14.pt there; "
                                "it is the file the `clip` package downloads for 'ViT-L/14')")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file: {err}") from None
    else:
        sd = None
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                if any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in zf.namelist()):
                    sd = _read_torchscript_zip(path, zf)
        if sd is None:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # pickle / zip / torch errors all mean "not a plain checkpoint"
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ValueError(f"{path}: not a CLIP checkpoint readable with weights_only=True: {first}") from None
            if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
                sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path}: expected a non-empty mapping of names to tensors, got {type(sd).__name__}")
    return {k: v for k, v in sd.items() if k not in _OPENAI_METADATA_KEYS}
