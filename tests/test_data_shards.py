"""Shards: pack the 10 procedural smoke objects with data_prep/pack.py, stream them per rank / worker without
duplicates, resume mid-epoch, and train 2 steps from shards with the same batches as from folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from syncdreamer.data.datamodule import SyncDreamerDataModule, prepare_procedural_dataset
from syncdreamer.data.manifest import read_manifest, usable_uids
from syncdreamer.data.shards import ShardLoader, ShardStream, assign_shards, read_shard_index

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke experiment's 10 procedural objects (CPU rasteriser at 64 px, so no Blender), packed into
    shards of 2 objects by the data_prep/pack.py CLI."""
    root = tmp_path_factory.mktemp("smoke")
    prepare_procedural_dataset(root, num_objects=10, seed=0, val_objects=2,
                               render={"renderer": "cpu", "resolution": SIZE, "preset": "fast"},
                               checks={"min_iou": 0.75, "min_coverage": 0.9}, log_fn=lambda *_: None)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, str(REPO / "data_prep" / "pack.py"), f"root={root}", "objects_per_shard=2",
                        f"image_size={SIZE}", "progress=false"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return root


def _train_uids(root):
    return usable_uids(read_manifest(root), "train")[0]


def test_pack_writes_every_training_object_once_and_resumes(smoke, tmp_path):
    train = _train_uids(smoke)
    assert len(train) == 8  # 10 objects, 2 held out
    index = read_shard_index(smoke / "shards")
    assert [s["count"] for s in index["shards"]] == [2, 2, 2, 2] and index["kind"] == "images"
    stream = ShardStream(smoke / "shards", 16, SIZE, batch_size=1, shuffle=False)
    assert [item["uid"] for item in stream] == train  # manifest order, each once
    # resumable: a deleted shard is rewritten, the others are kept (mtime unchanged)
    shard = smoke / "shards" / index["shards"][1]["name"]
    other = smoke / "shards" / index["shards"][0]["name"]
    before, other_mtime = _members(shard), other.stat().st_mtime_ns
    shard.unlink()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, str(REPO / "data_prep" / "pack.py"), f"root={smoke}", "objects_per_shard=2",
                        f"image_size={SIZE}", "progress=false", "task=1", "num_tasks=2"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "1 shards written (2 objects), 1 already there" in r.stdout, r.stdout + r.stderr
    assert _members(shard) == before and other.stat().st_mtime_ns == other_mtime


def _members(tar) -> list[dict]:
    import webdataset as wds

    return list(wds.tarfile_to_samples()(iter([{"url": str(tar)}])))


def test_ranks_and_workers_get_disjoint_shards_covering_the_epoch(smoke):
    train = set(_train_uids(smoke))
    for world, workers in ((2, 2), (4, 1), (1, 4), (2, 1)):
        seen = []
        for rank in range(world):
            stream = ShardStream(smoke / "shards", 16, SIZE, batch_size=1, rank=rank, world_size=world,
                                 num_workers=workers, seed=3, shuffle=True)
            stream.epoch = 1
            for w in range(workers):  # what worker w of this rank reads
                stream_w = _as_worker(stream, w)
                seen += [item["uid"] for item in stream_w]
        assert len(seen) == len(set(seen)) == 8 and set(seen) == train, (world, workers)
    # the shard order changes with the epoch, deterministically
    counts = [2, 2, 2, 2]
    assert assign_shards(counts, 0, 2, 1, 0, 3, True) == assign_shards(counts, 0, 2, 1, 0, 3, True)
    orders = {tuple(assign_shards(counts, 0, 1, 1, e, 3, True)[0][0]) for e in range(6)}
    assert len(orders) > 1


def _as_worker(stream: ShardStream, worker: int):
    """Iterate ``stream`` as dataloader worker ``worker`` would (same shards, cap and skip)."""
    import webdataset as wds

    samples = wds.tarfile_to_samples()(iter([{"url": u} for u in stream.worker_shards(worker)]))
    for k, sample in enumerate(samples):
        if k >= stream.per_worker:
            return
        if k >= stream._skip(worker):
            yield stream.decode(sample)


def test_mid_epoch_resume_skips_exactly_the_trained_batches(smoke):
    def loader():
        stream = ShardStream(smoke / "shards", 16, SIZE, batch_size=2, seed=5, shuffle=True, shuffle_buffer=4)
        return ShardLoader(stream)

    full = loader()
    epochs = [[b["uid"] for b in full] for _ in range(2)]
    assert epochs[0] != epochs[1] and sorted(sum(epochs[1], [])) == sorted(_train_uids(smoke))
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 1})  # a checkpoint after 1 batch of the second epoch
    assert [b["uid"] for b in resumed] == epochs[1][1:]
    assert resumed.state_dict() == {"epoch": 1, "batches": 4}
    assert [b["uid"] for b in resumed] != epochs[1]  # and the next pass is the next epoch


def _datamodule(root, fmt, mirror_prob=0.0):
    return SyncDreamerDataModule(root, train_list="train_uids.txt", val_list="val_uids.txt", image_size=SIZE,
                                 batch_size=2, num_workers=0, pin_memory=False, format=fmt, shuffle=False,
                                 mirror_prob=mirror_prob)


@pytest.mark.parametrize("mirror_prob", [0.0, 0.5])
def test_shards_give_the_same_batches_as_folders(smoke, mirror_prob):
    batches = {}
    for fmt in ("folders", "shards"):
        dm = _datamodule(smoke, fmt, mirror_prob)
        dm.setup("fit")
        torch.manual_seed(0)
        batches[fmt] = [b for _, b in zip(range(3), dm.train_dataloader())]
    for a, b in zip(batches["folders"], batches["shards"]):
        assert a["uid"] == b["uid"]
        assert torch.equal(a["input_index"], b["input_index"]) and a["input_index"].unique().numel() >= 1
        for key in ("target_image", "input_image", "input_elevation"):
            assert torch.equal(a[key], b[key]), key
    assert batches["folders"][0]["target_image"].shape == (2, 16, 3, SIZE, SIZE)


class _RecordBatches(L.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()})


def test_two_training_steps_from_shards_equal_folders(smoke, tmp_path, monkeypatch):
    import syncdreamer.systems.runner as runner
    from test_train_run import compose_cfg, tiny_overrides

    from syncdreamer.systems import train

    orig = runner.instantiate_callbacks
    runs = {}
    for fmt in ("folders", "shards"):
        rec = _RecordBatches()
        monkeypatch.setattr(runner, "instantiate_callbacks", lambda c, rec=rec: orig(c) + [rec])
        over = tiny_overrides(tmp_path / fmt, smoke, steps=2, **{"data.format": fmt, "data.shuffle": "false",
                                                                  "data.train_list": "train_uids.txt",
                                                                  "data.val_list": "val_uids.txt"})
        metrics = train(compose_cfg(over))
        assert metrics["global_step"] == 2
        runs[fmt] = (rec.batches, metrics["train/loss"])
    (fb, floss), (sb, sloss) = runs["folders"], runs["shards"]
    assert len(fb) == len(sb) == 2
    for a, b in zip(fb, sb):
        assert a["uid"] == b["uid"]
        for key in ("target_image", "input_image", "input_elevation", "input_index"):
            assert torch.equal(a[key], b[key]), key
    assert floss == sloss
