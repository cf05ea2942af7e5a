"""The data path at Objaverse scale: manifest index, per-rank setup and loader throughput (markdown tables).

    python bench/bench_data.py [--objects 800000] [--ranks 8] [--loader-objects 48] [--batches 12]

1. A synthetic manifest of ``--objects`` rows (no image files), then the index the data module builds from
   it (read + select the usable training uids) in a fresh process: seconds and peak RSS.
2. ``SyncDreamerDataModule.setup()`` on ``--ranks`` simulated ranks over that manifest, for ``format=folders``
   (each rank's ``DistributedSampler`` share, as Lightning injects it) and ``format=shards`` (synthetic
   ``shards.json``, whole shards per rank): seconds per rank, the share, and that shares are disjoint and
   cover the epoch.
3. Loader samples/s with 2 workers from a small real set (``--loader-objects`` objects written here) at 64 and
   256 px: folders (PNG decode + resize), shards (the same PNGs in webdataset tars) and the latent cache
   (safetensors, no VAE), next to the rate 8 GPUs at batch 24 need at the documented step time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

#: Official training: 8x A100 for 4-5 days, ~80k steps (spec 3.3) -> seconds per step.
DOCUMENTED_STEP_S = 4.5 * 86400 / 80_000
GPUS, BATCH = 8, 24


def synthetic_manifest(root: Path, n: int, views: int = 16) -> None:
    """``n`` rows: 1 % incomplete, 2 % val, 16 input elevations each; written with pyarrow column arrays."""
    import pyarrow as pa

    from syncdreamer.data.manifest import manifest_schema, write_manifest

    rng = np.random.default_rng(0)
    uids = pa.array([f"{i:032x}" for i in rng.permutation(n * 4)[:n]]).cast(pa.string())
    status = np.where(rng.random(n) < 0.01, "incomplete", "complete")
    split = np.where(rng.random(n) < 0.02, "val", "train")
    elev = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * views, views, dtype=np.int32)),
                                    pa.array(rng.uniform(-0.17, 0.7, n * views).astype(np.float32)))
    reason = pa.array([None if s == "complete" else "input: meta.pkl missing" for s in status], pa.string())
    null_f = pa.nulls(n, pa.float32())
    cols = {"uid": uids, "split": pa.array(split), "status": pa.array(status), "reason": reason,
            "views": pa.array(np.full(n, views, np.int32)), "image_size": pa.array(np.full(n, 256, np.int32)),
            "input_elevations": elev, "render_settings": pa.nulls(n, pa.string()),
            "has_depth": pa.array(np.ones(n, bool)), "checked_silhouette": pa.array(np.zeros(n, bool)),
            "sil_inside": null_f, "sil_coverage": null_f, "sil_iou": null_f, "depth_consistent": null_f}
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root, pa.Table.from_pydict(cols, schema=manifest_schema()))


_INDEX_CHILD = """
import resource, sys, time
sys.path.insert(0, {src!r})
t_imp = time.perf_counter()
from syncdreamer.data.manifest import read_manifest, usable_uids
t0, c0 = time.perf_counter(), time.process_time()
table = read_manifest({root!r}, columns=["uid", "split", "status", "reason"])
uids, other = usable_uids(table)
train = usable_uids(table, "train")[0]
print(time.perf_counter() - t0, time.process_time() - c0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(uids), len(train),
      t0 - t_imp)
"""


def bench_index(root: Path) -> dict:
    """Read the manifest and select usable / training uids in a fresh interpreter: seconds and peak RSS."""
    out = subprocess.run([sys.executable, "-c", _INDEX_CHILD.format(src=str(REPO / "src"), root=str(root))],
                         capture_output=True, text=True, check=True).stdout.split()
    return {"seconds": float(out[0]), "cpu_s": float(out[1]), "rss_mb": float(out[2]), "usable": int(out[3]),
            "train": int(out[4]), "import_s": float(out[5])}


def synthetic_shard_index(shard_dir: Path, n_train: int, per_shard: int) -> None:
    """``shards.json`` for ``n_train`` objects plus empty tar files (setup only checks that they exist)."""
    from syncdreamer.data.shards import plan_shards, shard_name, write_shard_index

    chunks = plan_shards([f"u{i}" for i in range(n_train)], per_shard)
    write_shard_index(shard_dir, chunks, "images", "train", 16, 256, per_shard)
    for j in range(len(chunks)):
        (shard_dir / shard_name("train", j)).touch()


def bench_setup(root: Path, ranks: int, fmt: str) -> dict:
    """setup() per simulated rank; each rank's share of the epoch; disjoint + covering checks."""
    from torch.utils.data import DistributedSampler

    from syncdreamer.data.datamodule import SyncDreamerDataModule

    times, cpus, shares = [], [], []
    for rank in range(ranks):
        dm = SyncDreamerDataModule(root, view_num=16, image_size=256, batch_size=BATCH, num_workers=2,
                                   format=fmt, shards=str(root / "shards"), seed=0)
        t0, c0 = time.perf_counter(), time.process_time()
        dm.setup("fit", rank=rank, world_size=ranks)
        if fmt == "folders":
            share = list(DistributedSampler(dm.train_set, num_replicas=ranks, rank=rank, shuffle=True, seed=0))
        else:
            stream = dm.train_set
            counts = [s["count"] for s in stream.index["shards"]]
            starts = np.concatenate([[0], np.cumsum(counts)])
            share = np.concatenate([np.concatenate([np.arange(starts[j], starts[j + 1]) for j in
                                                    _worker_shards(stream, w)])[: stream.per_worker]
                                    for w in range(stream.num_workers)])
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        shares.append(share)
    n_train = len(dm.train_uids)
    flat = np.concatenate([np.asarray(s, np.int64) for s in shares])
    pad = len(flat) - n_train if fmt == "folders" else 0  # DistributedSampler repeats a few to even out ranks
    disjoint = len(np.unique(flat)) == len(flat) - pad
    covered = len(np.unique(flat)) / (n_train if fmt == "folders" else int(np.sum(counts)))
    return {"format": fmt, "median_s": float(np.median(times)), "median_cpu_s": float(np.median(cpus)), "max_s": float(np.max(times)), "train": n_train,
            "share": sorted({len(s) for s in shares}), "disjoint": disjoint, "covered": covered, "pad": pad}


def _worker_shards(stream, worker: int) -> list[int]:
    from syncdreamer.data.shards import assign_shards

    counts = [s["count"] for s in stream.index["shards"]]
    per, _ = assign_shards(counts, stream.rank, stream.world_size, stream.num_workers, stream.epoch, stream.seed,
                           stream.shuffle)
    return per[worker]


def small_real_set(root: Path, n: int, size: int) -> list[str]:
    """``n`` objects of random-blob RGBA views at ``size`` px (PNG, like renders), their manifest, shards and a
    latent cache of the model's shapes (h = size / 8, CLIP 1024)."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from syncdreamer import cameras
    from syncdreamer.data import layout
    from syncdreamer.data.manifest import index_dataset, read_manifest, usable_uids
    from syncdreamer.data.shards import pack_shards

    rng = np.random.default_rng(size)
    uids = [f"obj{k:04d}" for k in range(n)]
    yy, xx = np.mgrid[:size, :size] / size
    (root / "latents").mkdir(parents=True, exist_ok=True)
    for k, uid in enumerate(uids):
        for rig in layout.RIGS:
            for i in range(16):
                c = rng.uniform(0.3, 0.7, 2)
                alpha = (((yy - c[0]) ** 2 + (xx - c[1]) ** 2) < 0.06).astype(np.uint8) * 255
                rgb = (np.dstack([np.sin(xx * f + p) for f, p in rng.uniform(2, 12, (3, 2))]) * 100 + 128
                       ).astype(np.uint8)  # smooth shading, like a render
                path = layout.view_path(root, rig, uid, i)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.dstack([rgb, alpha])).save(path)
            layout.write_meta(layout.meta_path(root, rig, uid),
                              cameras.make_rig(16, rng.uniform(-10, 40, 16), 1.5, size, 280.0 * size / 256))
        h = size // 8
        save_file({"target_mean": torch.randn(16, 4, h, h), "target_std": torch.rand(16, 4, h, h),
                   "input_mean": torch.randn(16, 4, h, h), "input_std": torch.rand(16, 4, h, h),
                   "input_clip": torch.randn(16, 1, 1024), "input_elevations": torch.rand(16)},
                  str(root / "latents" / f"{uid}.safetensors"))
    index_dataset(root, 16, progress=False)
    train = usable_uids(read_manifest(root))[0]
    pack_shards(root, train, root / "shards", 16, size, objects_per_shard=max(1, n // 8), progress=False)
    return train


def _datamodule(root: Path, fmt: str, size: int, batch_size: int, workers: int):
    from syncdreamer.data.datamodule import SyncDreamerDataModule

    dm = SyncDreamerDataModule(root, view_num=16, image_size=size, batch_size=batch_size, num_workers=workers,
                               pin_memory=False, format="shards" if fmt == "shards" else "folders",
                               latent_cache=str(root / "latents") if fmt == "latent cache" else None)
    dm.setup("fit")
    return dm


def _take(dm, batches: int, clock) -> float:
    """Samples per ``clock`` second over ``batches`` batches after the first (worker start-up)."""
    n, t0 = 0, None
    while True:
        for _ in dm.train_dataloader():
            if t0 is None:
                t0 = clock()
                continue
            n += 1
            if n >= batches:
                return n * dm.batch_size / (clock() - t0)


def loader_rate(root: Path, fmt: str, size: int, batches: int, batch_size: int, workers: int) -> tuple[float, float]:
    """(samples / wall second with ``workers`` workers, samples / CPU second of one in-process loader)."""
    wall = _take(_datamodule(root, fmt, size, batch_size, workers), batches, time.perf_counter)
    cpu = _take(_datamodule(root, fmt, size, batch_size, 0), batches, time.process_time)
    return wall, cpu


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=800_000)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--objects-per-shard", type=int, default=1000)
    ap.add_argument("--loader-objects", type=int, default=48)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big"
        t0 = time.perf_counter()
        synthetic_manifest(big, args.objects)
        made = time.perf_counter() - t0
        idx = bench_index(big)
        synthetic_shard_index(big / "shards", idx["train"], args.objects_per_shard)
        setups = [bench_setup(big, args.ranks, fmt) for fmt in ("folders", "shards")]
        rates = {}
        for size in (64, 256):
            small = Path(tmp) / f"small{size}"
            small_real_set(small, args.loader_objects, size)
            for fmt in ("folders", "shards", "latent cache"):
                rates[(fmt, size)] = loader_rate(small, fmt, size, args.batches, args.batch_size, args.workers)
    print(f"**Manifest index** ({args.objects} objects, synthetic manifest written in {made:.1f} s; "
          "read + select in a fresh process)\n")
    print("| objects | usable | train split | read + select: wall s | CPU s | peak RSS | import s |\n"
          "|---|---|---|---|---|---|---|")
    print(f"| {args.objects} | {idx['usable']} | {idx['train']} | {idx['seconds']:.2f} | {idx['cpu_s']:.2f} | "
          f"{idx['rss_mb']:.0f} MB | {idx['import_s']:.1f} |\n")
    print(f"**setup() on {args.ranks} simulated ranks** (manifest only, no object file touched)\n")
    print("| format | train objects | per-rank share | disjoint | covered | median wall s / rank | median CPU s | max wall s |\n"
          "|---|---|---|---|---|---|---|---|")
    for s in setups:
        disjoint = f"{s['disjoint']}" + (f" (+{s['pad']} sampler padding)" if s["pad"] else "")
        print(f"| {s['format']} | {s['train']} | {'/'.join(map(str, s['share']))} | {disjoint} | "
              f"{100 * s['covered']:.2f} % | {s['median_s']:.2f} | {s['median_cpu_s']:.2f} | {s['max_s']:.2f} |")
    need = GPUS * BATCH / DOCUMENTED_STEP_S
    print(f"\n**Loader samples/s** ({args.workers} workers, batch {args.batch_size}, {args.loader_objects} objects, "
          f"{args.batches} batches after the first; needed: {GPUS} GPUs x batch {BATCH} / {DOCUMENTED_STEP_S:.2f} s "
          f"per step (official 4-5 days for ~80k steps) = {need:.1f} samples/s in total, {need / GPUS:.1f} per GPU "
          "loader)\n")
    print("| source | 64 px samples/s | 256 px samples/s | 64 px samples / CPU s | 256 px samples / CPU s | "
          "CPU cores per GPU at 256 px |\n|---|---|---|---|---|---|")
    for fmt in ("folders", "shards", "latent cache"):
        (w64, c64), (w256, c256) = rates[(fmt, 64)], rates[(fmt, 256)]
        print(f"| {fmt} | {w64:.1f} | {w256:.1f} | {c64:.1f} | {c256:.1f} | {need / GPUS / c256:.2f} |")
    json.dump({"index": idx, "setup": setups, "rates": {f"{k[0]}@{k[1]}": v for k, v in rates.items()}},
              sys.stderr)
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
