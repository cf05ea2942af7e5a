"""Time training steps of SyncDreamerSystem and report throughput and peak memory.

    python bench/bench_train.py                                  # tiny model at 64 px on CPU
    python bench/bench_train.py --configs syncdreamer --device cuda --batch 24 --precision bf16
    python bench/bench_train.py --configs syncdreamer --device cuda --batch 24 --latents   # latent-cache batches

One step = the system's full training step (VAE encoding of the 16 targets + input under no_grad unless
``--latents``, spatial volume of all views, UNet on one target view per sample, backward, AdamW step).
Weights and data are random (timing does not depend on them). Prints a markdown table: median step time
over ``--repeats`` steps after ``--warmup`` steps, samples/s, and peak memory (CUDA: max allocated; CPU: process
peak RSS).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from syncdreamer.systems import SyncDreamerSystem  # noqa: E402


def model_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(str(REPO / "conf" / "model"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_batch(model, B: int, latents: bool, device: str) -> dict:
    N, S, h = model.view_num, model.image_size, model.latent_size
    if latents:
        return {"target_latent_mean": torch.randn(B, N, 4, h, h, device=device),
                "target_latent_std": torch.full((B, N, 4, h, h), 0.01, device=device),
                "input_latent_mean": torch.randn(B, 4, h, h, device=device),
                "input_latent_std": torch.full((B, 4, h, h), 0.01, device=device),
                "clip_embed": torch.randn(B, 1, model.clip_dim, device=device),
                "input_elevation": torch.rand(B, device=device)}
    return {"target_image": torch.rand(B, N, 3, S, S, device=device) * 2 - 1,
            "input_image": torch.rand(B, 3, S, S, device=device) * 2 - 1,
            "input_elevation": torch.rand(B, device=device)}


def bench(name, overrides, device, precision, batch, latents, warmup, repeats, checkpointing):
    torch.manual_seed(0)
    model = instantiate(model_cfg(name, overrides + [f"use_checkpoint={str(checkpointing).lower()}"]))
    system = SyncDreamerSystem(model).to(device)
    system.train()
    opt = system.configure_optimizers()["optimizer"]
    data = make_batch(model, batch, latents, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss, _ = system.compute_loss(data)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"config": name, "overrides": " ".join(overrides) or "-", "device": device, "precision": precision,
            "batch": batch, "inputs": "latents" if latents else "images", "ckpt": checkpointing,
            "trainable_M": trainable / 1e6, "step_s": med, "samples_s": batch / med, "peak_MiB": peak_mib(device),
            "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["syncdreamer_tiny"])
    ap.add_argument("--overrides", nargs="*", default=None,
                    help="model overrides (default for the tiny model on CPU: image_size=64 focal=null "
                         "volume_resolution=16 frustum_depth=16, the smoke experiment's model)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--latents", action="store_true", help="batches from the latent cache (no VAE in the step)")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.configs:
        overrides = args.overrides
        if overrides is None:
            overrides = (["image_size=64", "focal=null", "volume_resolution=16", "frustum_depth=16"]
                         if name.endswith("tiny") else [])
        rows.append(bench(name, overrides, args.device, args.precision, args.batch, args.latents, args.warmup,
                          args.repeats, not args.no_checkpointing))
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
