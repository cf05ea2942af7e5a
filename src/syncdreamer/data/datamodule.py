"""LightningDataModule over the official render layout (optionally through a latent cache).

Training batches (images): ``target_image`` (B, N, 3, S, S), ``input_image`` (B, 3, S, S),
``input_elevation`` (B,) radians; with ``latent_cache`` set: ``target_latent_mean/std`` (B, N, 4, h, w),
``input_latent_mean/std`` (B, 4, h, w), ``clip_embed`` (B, 1, C), ``input_elevation`` (B,).
Validation batches: ``input_image``, ``input_elevation``, ``uid`` (+ ``target_image`` for held-out objects).

Objects are selected from ``<root>/manifest.parquet`` only (:mod:`syncdreamer.data.manifest`): no file of any
object is touched at setup, on any rank; a missing manifest is built once by rank 0 (``data_prep/index.py``
does the same ahead of time). ``format=folders`` reads the render folders (under DDP Lightning wraps the
loader in a ``DistributedSampler``, shuffled, seeded by ``seed_everything``); ``format=shards`` streams the
webdataset shards ``data_prep/pack.py`` wrote (:mod:`syncdreamer.data.shards`: whole shards per rank and
worker, resumable mid-epoch). ``prepare`` (the smoke experiment) builds a small data set on first use: procedural
meshes rendered with Blender, validated and split into ``train_uids.txt`` / ``val_uids.txt`` under ``root``;
a second run finds it complete and skips rendering.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from ..cameras import focal_from_lens
from . import layout
from .dataset import DataError, RenderedObjectsDataset, ValidationImageFolder, check_mirror_prob, resolve_uids
from .manifest import index_dataset, manifest_path, read_manifest, usable_uids
from .resources import render_config_path

log = logging.getLogger(__name__)

__all__ = ["SyncDreamerDataModule", "prepare_procedural_dataset", "RENDER_CONFIG"]

#: The render configuration the smoke preparation starts from (package data, see :mod:`.resources`).
RENDER_CONFIG = render_config_path()


def prepare_procedural_dataset(root, num_objects: int = 8, seed: int = 0, val_objects: int = 2,
                               render: dict | None = None, checks: dict | None = None, log_fn=log.info) -> dict:
    """Make ``num_objects`` procedural meshes, render them (``conf/render.yaml`` + ``render`` overrides),
    validate the renders (:class:`~syncdreamer.data.validate.ValidationConfig` + ``checks`` overrides, e.g. a
    lower ``min_iou`` at 64 px) and write ``train_uids.txt`` / ``val_uids.txt`` (``val_objects`` held out).

    Idempotent: rendered objects are skipped, so a second call only re-validates. Needs Blender.
    """
    from omegaconf import OmegaConf

    from .procedural import make_procedural_set
    from .render_driver import RenderError, run_render
    from .validate import ValidationConfig, validate_dataset

    root = Path(root)
    if (root / "train_uids.txt").is_file() and (root / "val_uids.txt").is_file():
        uids = layout.read_uid_list(root / "train_uids.txt") + layout.read_uid_list(root / "val_uids.txt")
        if uids and len(uids) >= num_objects:
            return {"prepared": False, "objects": len(uids)}
    meshes = root / "meshes"
    make_procedural_set(meshes, num_objects, seed=seed)
    cfg = OmegaConf.load(RENDER_CONFIG)
    cfg.pop("hydra", None)
    cfg = OmegaConf.merge(cfg, {"input": str(meshes), "output_dir": str(root), **dict(render or {})})
    log_fn(f"preparing the procedural data set in {root} ({num_objects} objects, Blender) ...")
    try:
        summary = run_render(OmegaConf.to_container(cfg, resolve=True), log=log_fn)
    except RenderError as exc:  # bad data.prepare.render settings or no Blender: one line, not a traceback
        raise DataError(f"data.prepare.render: {exc}") from None
    res = int(cfg.resolution)
    focal = focal_from_lens(float(cfg.lens_mm), float(cfg.sensor_mm), res)
    vcfg = ValidationConfig(views=int(cfg.views), resolution=res, focal=focal, distance=float(cfg.distance),
                            elevation=float(cfg.elevation), input_elevation=tuple(cfg.input_elevation),
                            **dict(checks or {}))
    frac = min(0.99, (val_objects + 0.01) / max(num_objects, 1)) if val_objects else 0.0
    vsum = validate_dataset(root, vcfg, meshes=meshes, out_dir=root, val_fraction=frac, split_seed=seed,
                            log=log_fn)
    if vsum["train"] == 0:
        raise DataError(f"procedural data preparation in {root} produced no valid training object "
                        f"(render summary: {summary.get('failed')} failed; see {root / 'failures.jsonl'})")
    return {"prepared": True, "objects": vsum["valid"], "render": summary, "validation": vsum}


class SyncDreamerDataModule(L.LightningDataModule):
    """Data for :class:`~syncdreamer.systems.SyncDreamerSystem`.

    Args:
        root: render folder (``target/``, ``input/``).
        train_list / val_list: uid lists (.txt / .pkl, absolute or relative to ``root``); ``val_list=None`` =
            the manifest's ``val`` split; ``train_list=None`` = every usable object except the validation ones.
        validation_dir: folder of RGBA ``<name>-<elev>.png`` validation inputs (official ``validation_set``).
        val_source: ``auto`` (folder if given, else held-out objects if ``val_list``, else none), ``folder``,
            ``objects`` or ``none``.
        view_num, image_size: N and S; must match the model.
        batch_size, val_batch_size, num_workers, pin_memory, persistent_workers: loader settings (per GPU).
        max_val_items: at most this many validation inputs (sampling is expensive).
        latent_cache: folder of the latent cache (None = encode with the VAE inside the step).
        build_latent_cache: build the cache in ``prepare_data`` (needs :meth:`attach_encoder`).
        prepare: ``None`` or kwargs of :func:`prepare_procedural_dataset` (made on first use).
        format: ``folders`` (render folders / latent cache files) or ``shards`` (webdataset shards).
        shards: the shard folder (``data_prep/pack.py out_dir``); None = ``<root>/shards``.
        shuffle: shuffle the training order (folders: sampler; shards: shard order + a sample buffer).
        shuffle_buffer: objects in the in-worker shuffle buffer (shards).
        seed: seed of the shard order (shards; folders use ``seed_everything``).
        mirror_prob: probability that a training item is the object mirrored in the vertical plane through the
            input camera (images flipped, targets in mirrored order; :func:`~.dataset.target_order`). Not official
            (0); a latent cache then also holds the flipped views' latents (its own folder).
    """

    def __init__(self, root: str, train_list: str | None = None, val_list: str | None = None,
                 validation_dir: str | None = None, val_source: str = "auto", view_num: int = 16,
                 image_size: int = 256, batch_size: int = 24, val_batch_size: int = 4, num_workers: int = 8,
                 pin_memory: bool = True, persistent_workers: bool = False, max_val_items: int = 8,
                 latent_cache: str | None = None, build_latent_cache: bool = True,
                 prepare: dict[str, Any] | None = None, format: str = "folders", shards: str | None = None,
                 shuffle: bool = True, shuffle_buffer: int = 256, seed: int = 0, mirror_prob: float = 0.0):
        super().__init__()
        if format not in ("folders", "shards"):
            raise DataError(f"data.format must be folders or shards, got {format!r}")
        if val_source not in ("auto", "folder", "objects", "none"):
            raise DataError(f"val_source must be auto, folder, objects or none, got {val_source!r}")
        if batch_size < 1 or val_batch_size < 1 or num_workers < 0:
            raise DataError(f"batch_size ({batch_size}) and val_batch_size ({val_batch_size}) must be >= 1, "
                            f"num_workers ({num_workers}) >= 0")
        self.root = Path(str(root))
        self.train_list, self.val_list, self.validation_dir = train_list, val_list, validation_dir
        self.val_source, self.view_num, self.image_size = val_source, int(view_num), int(image_size)
        self.batch_size, self.val_batch_size, self.num_workers = int(batch_size), int(val_batch_size), int(num_workers)
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers and num_workers > 0
        self.max_val_items = max_val_items
        self.latent_cache = Path(str(latent_cache)) if latent_cache else None
        self.build_latent_cache, self.prepare = build_latent_cache, dict(prepare) if prepare else None
        self.format, self.shuffle, self.shuffle_buffer, self.seed = format, bool(shuffle), int(shuffle_buffer), int(seed)
        self.mirror_prob = check_mirror_prob(mirror_prob)
        self.shards = Path(str(shards)) if shards else self.root / "shards"
        if format == "shards" and self.persistent_workers:
            log.info("data.format=shards: persistent_workers off (every epoch re-plans the shard order)")
            self.persistent_workers = False
        self._encoder = None
        self.rank, self.world_size = 0, 1
        self.train_set = self.val_set = None
        self.train_uids: list[str] = []
        self.val_uids: list[str] = []

    # ------------------------------------------------------------------------------------------ checks
    def check(self) -> None:
        """Fail early (before any model is built) when the data cannot exist (no folder and nothing to prepare) or
        the shard pack cannot serve this run (``format=shards``: its views, ``mirror_prob``)."""
        if self.prepare is None:
            self._select_uids()
        if self.format == "shards":
            from .shards import open_shard_index

            open_shard_index(self.shards, self.view_num, self.mirror_prob)
        if self.validation_dir and self.val_source in ("auto", "folder"):
            ValidationImageFolder(self.validation_dir, self.image_size, self.max_val_items)

    def attach_encoder(self, model) -> None:
        """Give the data module the model whose VAE/CLIP build the latent cache (in :meth:`prepare_data`).

        The cache then lives in ``<latent_cache>/<key>`` with ``key`` = hash of the encoder weights and sizes;
        without an attached encoder ``latent_cache`` itself must hold a ready cache.
        """
        from .latent_cache import cache_key

        self._encoder = model
        self._cache_dir = self.latent_cache / cache_key(model, self.image_size, self.view_num, self.mirror_prob > 0)

    @property
    def cache_dir(self) -> Path | None:
        """The folder the latent cache is read from (None without a cache)."""
        if self.latent_cache is None:
            return None
        return getattr(self, "_cache_dir", None) or self.latent_cache

    def _manifest_table(self):
        """The manifest; rank 0 (from the launcher's environment) builds it once when it is missing."""
        path = manifest_path(self.root)
        if not path.is_file():
            if _env_rank() != 0:
                raise DataError(f"{path} not found: build it with `python data_prep/index.py root={self.root}`")
            log.info("no manifest in %s: indexing the data set once (data_prep/index.py does this ahead of time)",
                     self.root)
            index_dataset(self.root, self.view_num, progress=False)
        try:
            return read_manifest(path, columns=["uid", "split", "status", "reason"])
        except (OSError, ValueError) as exc:
            raise DataError(str(exc)) from None

    def _select_uids(self) -> None:
        """Training / validation uids from the manifest and the uid lists (no per-object file access)."""
        if not self.root.is_dir():
            raise DataError(f"data folder {str(self.root)!r} does not exist; render objects into it with "
                            "`python data_prep/render.py input=<meshes> output_dir=<dir>` or set data.root")
        table = self._manifest_table()
        usable, other = usable_uids(table)
        manifest_val = usable_uids(table, "val")[0]
        val = resolve_uids(self.root, self.val_list, usable) if self.val_list else manifest_val
        train = resolve_uids(self.root, self.train_list, usable)
        if self.train_list is None and val:  # every usable object except the held-out ones
            held = set(val)
            train = [u for u in train if u not in held]
        keep = set(usable)
        self.train_uids = _keep_usable(self.root, train, keep, other, len(table), "training")
        overlap = set(self.train_uids) & set(val)
        if overlap:
            log.warning("%d validation objects are also training objects (e.g. %s)", len(overlap), sorted(overlap)[:3])
        self.val_uids = _keep_usable(self.root, val, keep, other, len(table), "validation") if val else []

    def _resolve_lists(self) -> None:
        if self.prepare is not None:
            for attr, name in (("train_list", "train_uids.txt"), ("val_list", "val_uids.txt")):
                if getattr(self, attr) is None and (self.root / name).is_file():
                    setattr(self, attr, name)

    # ------------------------------------------------------------------------------------------ lightning hooks
    def prepare_renders(self) -> list[str]:
        """Make the procedural data set (if configured), resolve the uid lists; returns the training uids."""
        if self.prepare is not None:
            prepare_procedural_dataset(self.root, **self.prepare)
        self._resolve_lists()
        self._select_uids()
        return list(self.train_uids)

    def prepare_data(self) -> None:
        """Rank 0 only: make the procedural data set (if configured) and the latent cache (if configured; not
        with ``format=shards``, whose training items come from the pack)."""
        self.prepare_renders()
        if self.format == "shards" and self.latent_cache is not None:
            log.info("data.format=shards: training reads %s, the latent cache is not built", self.shards)
        elif self.latent_cache is not None and self.build_latent_cache:
            self._select_uids()
            if self._encoder is None:
                raise DataError("data.latent_cache is set but no encoder is attached; call attach_encoder(model)")
            from .latent_cache import build_latent_cache

            stats = build_latent_cache(self._encoder, self.root, self.train_uids, self.cache_dir,
                                       self.view_num, self.image_size, mirror=self.mirror_prob > 0)
            log.info("latent cache %s: %s", self.cache_dir, stats)

    def setup(self, stage: str | None = None, rank: int | None = None, world_size: int | None = None) -> None:
        """Select the objects (manifest) and build the data sets; ``rank`` / ``world_size`` default to the
        trainer's (pass them to simulate a rank, e.g. in ``bench/bench_data.py``)."""
        trainer = getattr(self, "trainer", None)
        self.rank = int(rank if rank is not None else (trainer.global_rank if trainer is not None else 0))
        self.world_size = int(world_size if world_size is not None else (trainer.world_size if trainer is not None else 1))
        self._resolve_lists()
        self._select_uids()
        if self.format == "shards":
            from .shards import ShardStream

            self.train_set = ShardStream(self.shards, self.view_num, self.image_size, self.batch_size, self.rank,
                                         self.world_size, self.num_workers, self.seed, self.shuffle,
                                         self.shuffle_buffer, mirror_prob=self.mirror_prob)
        elif self.latent_cache is not None:
            from .latent_cache import LatentCacheDataset

            self.train_set = LatentCacheDataset(self.cache_dir, self.train_uids, self.view_num,
                                                mirror_prob=self.mirror_prob)
        else:
            self.train_set = RenderedObjectsDataset(self.root, self.train_uids, self.view_num, self.image_size,
                                                    mirror_prob=self.mirror_prob)
        self._setup_validation()

    def _setup_validation(self) -> None:
        source = self.val_source
        if source == "auto":
            source = "folder" if self.validation_dir else ("objects" if self.val_uids else "none")
        if source == "folder":
            if not self.validation_dir:
                raise DataError("val_source=folder needs data.validation_dir")
            self.val_set = ValidationImageFolder(self.validation_dir, self.image_size, self.max_val_items)
        elif source == "objects":
            if not self.val_uids:
                raise DataError("val_source=objects needs data.val_list with valid held-out objects")
            uids = self.val_uids[: self.max_val_items] if self.max_val_items else self.val_uids
            self.val_set = RenderedObjectsDataset(self.root, uids, self.view_num, self.image_size, input_index=0)
        else:
            self.val_set = None

    def train_dataloader(self) -> DataLoader:
        if self.format == "shards":
            from .shards import ShardLoader

            return ShardLoader(self.train_set, num_workers=self.num_workers, pin_memory=self.pin_memory,
                               progress=self._batches_done)
        if len(self.train_set) < self.batch_size:
            raise DataError(f"{len(self.train_set)} training objects < batch_size {self.batch_size}")
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=self.shuffle, drop_last=True,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers)

    def _batches_done(self) -> int | None:
        """Batches of the running epoch Lightning has finished (the resume point of the shard stream)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False, num_workers=0)


def _env_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not launched distributed)."""
    import os

    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _keep_usable(root, uids: list[str], usable: set[str], other: dict, total: int, what: str) -> list[str]:
    """The uids the manifest marks usable; warn about the rest, :class:`DataError` when none is left."""
    good = [u for u in uids if u in usable]
    if len(good) < len(uids):
        bad = [u for u in uids if u not in usable]
        log.warning("%d of %d %s objects under %s are not usable in the manifest and skipped (e.g. %s)",
                    len(bad), len(uids), what, root, bad[:3])
    if not good:
        states = ", ".join(f"{n} {k}" for k, n in sorted(other.items())) or "none unusable"
        raise DataError(f"no valid {what} object under {root}: the manifest lists {total} object(s) ({states}); "
                        f"see the reasons in {manifest_path(root)} or rebuild it with data_prep/index.py")
    return good
