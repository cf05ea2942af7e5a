"""Time one denoiser forward (all N views, classifier-free guidance) and report peak memory.

    python bench/bench_denoiser.py                       # tiny config on CPU (+ full config when CUDA is present)
    python bench/bench_denoiser.py --configs syncdreamer --device cuda --precision bf16

One "forward" = one sampler step's network work: the spatial volume from all views plus the UNet on
every view for both CFG branches (``SyncDreamer.predict_eps`` with ``cfg_scale != 1``). Weights are random
(timing does not depend on them). Prints a markdown table with the median of ``--repeats`` runs.
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
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from syncdreamer.checkpoints import build_model  # noqa: E402
from syncdreamer.models import Condition  # noqa: E402


def model_cfg(name: str) -> dict:
    with initialize_config_dir(str(REPO / "conf" / "model"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name=name), resolve=True)
    cfg["vae"] = cfg["clip"] = None  # the denoiser only
    cfg["use_checkpoint"] = False
    return cfg


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


def bench(name: str, device: str, precision: str, repeats: int, batch_view_num: int | None, cfg_scale: float):
    torch.manual_seed(0)
    model = build_model(model_cfg(name)).to(device).eval()
    N, C, h = model.view_num, model.latent_channels, model.latent_size
    cond = Condition(torch.randn(1, C, h, h, device=device), torch.randn(1, 1, model.clip_dim, device=device),
                     torch.tensor([0.3], device=device))
    x = torch.randn(1, N, C, h, h, device=device)
    t = torch.tensor([500], device=device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    times = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for i in range(repeats + 1):  # first run is warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            model.predict_eps(x, t, model.complete(cond), cfg_scale, batch_view_num)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return dict(config=name, device=device, precision=precision, views=N, bvn=batch_view_num or N,
                params=params, median=statistics.median(times), min=min(times), peak=peak_mb(device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=None, help="model configs (default: tiny on CPU, +full on GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", nargs="+", default=None, help="fp32 bf16 fp16 (default fp32; +bf16 on GPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-view-num", type=int, default=None, help="views per UNet call (default: all)")
    ap.add_argument("--cfg-scale", type=float, default=2.0)
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    configs = args.configs or (["syncdreamer_tiny", "syncdreamer"] if gpu else ["syncdreamer_tiny"])
    precisions = args.precision or (["fp32", "bf16"] if gpu else ["fp32"])
    rows = [bench(c, args.device, p, args.repeats, args.batch_view_num, args.cfg_scale)
            for c in configs for p in precisions]
    threads = torch.get_num_threads()
    print(f"\nDenoiser forward, 16 views x 2 CFG branches, median of {args.repeats} (torch {torch.__version__}, "
          f"{threads} CPU threads{', ' + torch.cuda.get_device_name() if gpu else ''})\n")
    print("| config | device | precision | views/UNet call | params (M) | median s | min s | peak memory MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = "GPU alloc" if gpu else "process RSS"
        print(f"| {r['config']} | {r['device']} | {r['precision']} | {r['bvn']} | {r['params']:.1f} | "
              f"{r['median']:.3f} | {r['min']:.3f} | {r['peak']:.0f} ({mem}) |")


if __name__ == "__main__":
    main()
