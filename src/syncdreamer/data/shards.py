"""WebDataset shards of a validated data set: packing (``data_prep/pack.py``) and the training stream.

A shard folder holds ``shards.json`` and ``<split>-NNNNNN.tar`` files written with ``webdataset.TarWriter``.
Each tar member group is one object (key = uid), either

* ``images``: ``t000.png .. t{N-1}.png`` (target rig), ``i000.png ..`` (input rig), ``meta.json``
  (the input rig's cameras: :func:`syncdreamer.data.meta.read_meta` keys), or
* ``latents``: ``latents.safetensors`` (the latent cache file of :mod:`syncdreamer.data.latent_cache`).

``shards.json``: ``{"kind", "split", "view_num", "image_size", "objects_per_shard", "shards": [{"name",
"count", "first_uid"}]}``, for ``latents`` also ``"mirror"`` (the cache held the flipped views that
``data.mirror_prob`` > 0 needs); it is a pure function of the manifest and the settings, so every packing task of a
SLURM array writes the same one. The split's uids (manifest order) are cut into ``ceil(n / k)`` consecutive
shards of (almost) equal size; a task packs the shards ``task, task + num_tasks, ...`` that do not exist yet (atomic
rename), so an interrupted array resumes where it stopped.

:class:`ShardStream` splits whole shards across DDP ranks and then dataloader workers (disjoint: no
object twice in an epoch), shuffles the shard order per epoch and samples within a buffer, and caps every
(rank, worker) at the same number of whole batches, so all ranks step equally (the few objects beyond
the cap wait for a later epoch's shard order; the count is logged). It resumes mid-epoch by skipping the
batches already trained (Lightning's resumable-loader ``state_dict`` interface, :class:`ShardLoader`).
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import layout
from .dataset import DataError, check_mirror_prob, draw_input_index, draw_mirror, object_item
from .latent_cache import cached_mirror, latent_item

log = logging.getLogger(__name__)

__all__ = ["SHARD_INDEX", "KINDS", "plan_shards", "shard_name", "object_sample", "write_shard_index",
           "pack_shards", "read_shard_index", "assign_shards", "worker_cap", "ShardStream", "ShardLoader"]

SHARD_INDEX = "shards.json"
KINDS = ("images", "latents")


def shard_name(split: str, j: int) -> str:
    """File name of shard ``j``: ``train-000012.tar``."""
    return f"{split}-{j:06d}.tar"


def plan_shards(uids: Sequence[str], objects_per_shard: int) -> list[list[str]]:
    """``ceil(n / objects_per_shard)`` consecutive chunks of the uids whose sizes differ by at most one (so
    no rank or worker is held back by a short last shard)."""
    if objects_per_shard < 1:
        raise DataError(f"objects_per_shard must be >= 1, got {objects_per_shard}")
    n = len(uids)
    bounds = np.linspace(0, n, -(-n // objects_per_shard) + 1).round().astype(int)
    return [list(uids[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def object_sample(root, uid: str, view_num: int, kind: str = "images", cache_dir=None) -> dict:
    """The tar members of one object (see the module docstring); raw file bytes, nothing re-encoded."""
    if "." in uid or "/" in uid:
        raise DataError(f"uid {uid!r} contains '.' or '/', which a webdataset key cannot hold; rename the object")
    sample = {"__key__": uid}
    if kind == "latents":
        sample["latents.safetensors"] = (Path(cache_dir) / f"{uid}.safetensors").read_bytes()
        return sample
    for rig, tag in (("target", "t"), ("input", "i")):
        for i in range(view_num):
            sample[f"{tag}{i:03d}.png"] = layout.view_path(root, rig, uid, i).read_bytes()
    meta = layout.read_meta(layout.meta_path(root, "input", uid))
    sample["meta.json"] = json.dumps({k: np.asarray(v).tolist() for k, v in meta.items()}).encode()
    return sample


def write_shard_index(out_dir, chunks, kind, split, view_num, image_size, objects_per_shard,
                      mirror: bool = False) -> dict:
    """Write ``shards.json`` atomically (identical content from every task) and return it."""
    index = {"kind": kind, "split": split, "view_num": int(view_num), "image_size": int(image_size),
             "objects_per_shard": int(objects_per_shard),
             "shards": [{"name": shard_name(split, j), "count": len(c), "first_uid": c[0]} for j, c in enumerate(chunks)]}
    if kind == "latents":
        index["mirror"] = bool(mirror)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{SHARD_INDEX}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out_dir / SHARD_INDEX)
    return index


def _write_shard(path: Path, samples) -> None:
    import webdataset as wds

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with wds.TarWriter(str(tmp), encoder=False) as sink:
        for sample in samples:
            sink.write(sample)
    os.replace(tmp, path)


def pack_shards(root, uids: Sequence[str], out_dir, view_num: int, image_size: int, objects_per_shard: int = 1000,
                kind: str = "images", split: str = "train", cache_dir=None, task: int = 0, num_tasks: int = 1,
                progress: bool = True) -> dict:
    """Pack ``uids`` into shards under ``out_dir`` (this task's share; existing shards are kept).

    Returns ``{"shards": total, "written": n, "existing": m, "objects": written objects}``.
    """
    from tqdm import tqdm

    if kind not in KINDS:
        raise DataError(f"kind must be one of {KINDS}, got {kind!r}")
    if num_tasks < 1 or not 0 <= task < num_tasks:
        raise DataError(f"need 0 <= task < num_tasks, got task={task} num_tasks={num_tasks}")
    if kind == "latents" and (cache_dir is None or not Path(cache_dir).is_dir()):
        raise DataError(f"kind=latents needs cache_dir=<latent cache folder>, got {cache_dir!r}")
    chunks = plan_shards(list(uids), int(objects_per_shard))
    if not chunks:
        raise DataError(f"no object of split {split!r} to pack")
    mirror = kind == "latents" and bool(cached_mirror(cache_dir))
    write_shard_index(out_dir, chunks, kind, split, view_num, image_size, objects_per_shard, mirror)
    mine = list(range(task, len(chunks), num_tasks))
    todo = [j for j in mine if not (Path(out_dir) / shard_name(split, j)).is_file()]
    objects = 0
    for j in tqdm(todo, desc=f"packing task {task}/{num_tasks}", unit="shard", disable=not progress):
        _write_shard(Path(out_dir) / shard_name(split, j),
                     (object_sample(root, u, view_num, kind, cache_dir) for u in chunks[j]))
        objects += len(chunks[j])
    return {"shards": len(chunks), "written": len(todo), "existing": len(mine) - len(todo), "objects": objects}


def read_shard_index(shard_dir) -> dict:
    """``shards.json`` of a shard folder, with every listed tar checked to exist (one stat per shard)."""
    path = Path(shard_dir) / SHARD_INDEX
    if not path.is_file():
        raise DataError(f"{path} not found: pack the data set with `python data_prep/pack.py root=<data> "
                        f"out_dir={shard_dir}` or set data.format=folders")
    index = json.loads(path.read_text())
    missing = [s["name"] for s in index["shards"] if not (Path(shard_dir) / s["name"]).is_file()]
    if missing:
        raise DataError(f"{shard_dir}: {len(missing)} of {len(index['shards'])} shards missing (e.g. {missing[0]}); "
                        "rerun the packing array (it resumes)")
    return index


def open_shard_index(shard_dir, view_num: int, mirror_prob: float = 0.0) -> dict:
    """:func:`read_shard_index`, refused (:class:`DataError`, one line) when the pack cannot serve a run with
    ``view_num`` views and ``mirror_prob``: the data module calls it before the model is built, the stream again."""
    index = read_shard_index(shard_dir)
    if index["view_num"] != view_num or (index["kind"] == "images" and index["image_size"] < 1):
        raise DataError(f"{shard_dir} holds {index['view_num']} views per object, the run needs {view_num}")
    if index["kind"] == "latents" and mirror_prob > 0 and not index.get("mirror"):
        raise DataError(f"{shard_dir} was packed from a latent cache without mirrored views but data.mirror_prob="
                        f"{mirror_prob}: set data.mirror_prob=0, or repack from a cache built with it")
    return index


def assign_shards(counts: Sequence[int], rank: int, world_size: int, workers: int, epoch: int, seed: int,
                  shuffle: bool) -> tuple[list[list[int]], int]:
    """Shard ids per worker of ``rank`` and the per-worker sample cap.

    The shard order is a permutation seeded by ``(seed, epoch)`` (identity without ``shuffle``); rank ``r``
    takes positions ``r, r + W, ...`` and its worker ``w`` every ``workers``-th of those. Also returns the
    smallest (rank, worker) sample count of this order (:func:`worker_cap` bounds it for every order).
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(counts)) if shuffle else np.arange(len(counts))
    workers = max(1, workers)
    per = {(r, w): [int(j) for j in order[r::world_size][w::workers]] for r in range(world_size) for w in range(workers)}
    cap = min(sum(counts[j] for j in ids) for ids in per.values())
    return [per[(rank, w)] for w in range(workers)], cap


def worker_cap(counts: Sequence[int], slots: int) -> int:
    """Samples every one of ``slots`` (rank, worker) pairs is sure to have in any epoch's shard order: the
    sum of the ``len(counts) // slots`` smallest shards (every slot gets at least that many shards)."""
    return int(sum(sorted(counts)[: len(counts) // slots]))


class ShardStream(IterableDataset):
    """Training items from shards (same keys as the folder / latent-cache datasets).

    Args:
        shard_dir: folder with ``shards.json``.
        view_num, image_size: N and S.
        batch_size: per-worker caps are whole batches of this size.
        rank, world_size: this process's DDP rank and the number of ranks.
        num_workers: dataloader workers per rank (0 counts as 1).
        seed, shuffle, shuffle_buffer: shard order per epoch and in-worker sample shuffling.
        input_index: fixed input view (None = random, as training).
        mirror_prob: probability of a mirrored item (:func:`~syncdreamer.data.dataset.target_order`).
    """

    def __init__(self, shard_dir, view_num: int, image_size: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 256,
                 input_index: int | None = None, mirror_prob: float = 0.0):
        self.mirror_prob = check_mirror_prob(mirror_prob)
        self.shard_dir, self.index = Path(shard_dir), open_shard_index(shard_dir, view_num, self.mirror_prob)
        self.kind = self.index["kind"]
        self.view_num, self.image_size, self.batch_size = int(view_num), int(image_size), int(batch_size)
        self.rank, self.world_size, self.num_workers = int(rank), int(world_size), max(1, int(num_workers))
        self.seed, self.shuffle, self.shuffle_buffer, self.input_index = int(seed), shuffle, int(shuffle_buffer), input_index
        self.epoch, self.skip_batches = 0, 0
        counts = [s["count"] for s in self.index["shards"]]
        if len(counts) < self.world_size * self.num_workers:
            raise DataError(f"{len(counts)} shards < {self.world_size} ranks x {self.num_workers} workers: "
                            "repack with a smaller objects_per_shard")
        cap = worker_cap(counts, self.world_size * self.num_workers)
        self.per_worker = cap - cap % self.batch_size
        if self.per_worker < self.batch_size:
            raise DataError(f"each of {self.world_size * self.num_workers} loader workers gets {cap} objects "
                            f"< batch_size {self.batch_size}; repack with a smaller objects_per_shard")

    def __len__(self) -> int:
        return self.per_worker * self.num_workers

    def worker_shards(self, worker: int) -> list[str]:
        """Tar paths of ``worker`` of this rank in this epoch."""
        counts = [s["count"] for s in self.index["shards"]]
        per, _ = assign_shards(counts, self.rank, self.world_size, self.num_workers, self.epoch, self.seed, self.shuffle)
        return [str(self.shard_dir / self.index["shards"][j]["name"]) for j in per[worker]]

    def _skip(self, worker: int) -> int:
        """Samples this worker already produced before a mid-epoch resume (batches go round-robin)."""
        done = len(range(worker, self.skip_batches, self.num_workers))
        return done * self.batch_size

    def __iter__(self):
        import webdataset as wds

        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise DataError(f"ShardStream built for {self.num_workers} workers, loader has {info.num_workers}")
        samples = wds.tarfile_to_samples()(iter([{"url": u} for u in self.worker_shards(worker)]))
        if self.shuffle:
            samples = wds.shuffle(self.shuffle_buffer, seed=hash((self.seed, self.epoch, self.rank, worker)) % 2**32)(samples)
        skip = self._skip(worker)
        for k, sample in enumerate(samples):
            if k >= self.per_worker:
                return
            if k >= skip:
                yield self.decode(sample)

    def decode(self, sample: dict) -> dict:
        """Tar members of one object -> a training item."""
        uid = sample["__key__"]
        s = draw_input_index(self.view_num, self.input_index)
        mirror = draw_mirror(self.mirror_prob)
        if self.kind == "latents":
            from safetensors.torch import load as load_safetensors

            t = load_safetensors(sample["latents.safetensors"])
            return latent_item(uid, t, s, self.view_num, mirror)
        elevations = json.loads(sample["meta.json"])["elevations"]

        def read_rgba(rig: str, i: int) -> np.ndarray:
            from PIL import Image

            with Image.open(io.BytesIO(sample[f"{rig[0]}{i:03d}.png"])) as im:
                return np.asarray(im.convert("RGBA")).copy()

        return object_item(uid, s, self.view_num, self.image_size, read_rgba, elevations, mirror)


class ShardLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` that advances the stream's epoch on every pass and is
    resumable mid-epoch through Lightning's resumable-loader interface (``state_dict`` / ``load_state_dict``,
    saved in the checkpoint): ``batches`` = batches of the current epoch already trained, from ``progress``
    (a callable, e.g. Lightning's batch progress, which does not count the prefetched batch) or else the
    batches yielded. A resumed run skips that many batches of the same epoch order."""

    def __init__(self, stream: ShardStream, num_workers: int = 0, progress=None, **kw):
        if max(1, num_workers) != stream.num_workers:
            raise DataError(f"ShardStream built for {stream.num_workers} workers, loader asks for {num_workers}")
        super().__init__(stream, batch_size=stream.batch_size, num_workers=num_workers, **kw)
        self.stream, self.progress, self._epoch, self._batches, self._resume = stream, progress, -1, 0, None

    def __iter__(self):
        if self._resume is not None:
            self._epoch, skip = self._resume
            self._resume = None
        else:
            self._epoch, skip = self._epoch + 1, 0
        self.stream.epoch, self.stream.skip_batches, self._batches = self._epoch, skip, skip
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def __len__(self) -> int:
        return len(self.stream) // self.stream.batch_size

    def state_dict(self) -> dict:
        """``{"epoch", "batches"}`` of the pass in progress."""
        done = self.progress() if self.progress is not None else self._batches
        return {"epoch": self._epoch, "batches": int(done)}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next pass repeats epoch ``state["epoch"]``'s order, skipping its first batches."""
        self._resume = (int(state["epoch"]), int(state["batches"]))
