"""Time one denoiser step (all N views, classifier-free guidance) per precision; report error and peak memory.

    python bench/bench_denoiser.py                                              # tiny on CPU (+ full on a GPU)
    python bench/bench_denoiser.py --configs syncdreamer --device cpu --precision fp32 bf16
    python bench/bench_denoiser.py --configs syncdreamer --candidates           # + one row per speed candidate

One "step" = one sampler step's network work: the spatial volume from all views, the frustum volumes and the
UNet on every view for both CFG branches (``SyncDreamer.predict_eps`` with ``cfg_scale != 1``). Weights are
random; the zero-initialised layers (UNet output, depth-attention outputs) are re-initialised so that eps is
not trivially zero and the error column means something. Every row runs on the same model and inputs in one
process; ``x fp32`` is the ratio to the first fp32 row and ``rel. L2 vs fp32`` compares the step's eps with it.

Rows (``--candidates`` adds the ones marked *):
- ``fp32, official algorithm``*: depth attention as the explicit einsum, cross-attention to the single CLIP
  token computed in full (what the official code does);
- ``fp32``: our step (SDPA depth attention, single-token cross-attention shortcut);
- ``fp32 weights + autocast``*: ``torch.autocast(bfloat16)`` around the fp32 model (re-casts weights per call);
- ``bf16``: weights cast once (``SyncDreamer.set_precision("bf16")``), NHWC conv weights, norms and geometry
  in float32;
- ``bf16, NCHW conv weights``* (``channels_last=False``); ``bf16 + compile`` (``--compile``, and by default on a GPU): compile time reported.
With CUDA present and no ``--precision``, the GPU table (fp32, bf16, bf16 + compile) comes with the CPU one.
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
from syncdreamer.models.attention import CrossAttention  # noqa: E402
from syncdreamer.models.depth_attention import DepthAttention  # noqa: E402


def model_cfg(name: str) -> dict:
    with initialize_config_dir(str(REPO / "conf" / "model"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name=name), resolve=True)
    cfg["vae"] = cfg["clip"] = None  # the denoiser only
    cfg["use_checkpoint"] = False
    return cfg


def reinit_zero_layers(model: torch.nn.Module) -> None:
    """Give the zero-initialised layers (LDM/SyncDreamer ``zero_module``) PyTorch's default random init."""
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and hasattr(m, "reset_parameters") and w.numel() and not w.any():
            m.reset_parameters()


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)


def set_official_algorithm(model, on: bool) -> None:
    """Toggle the two exact shortcuts off (on=True) or back on."""
    CrossAttention.single_token_shortcut = not on
    for m in model.modules():
        if isinstance(m, DepthAttention):
            m.backend = "math" if on else "sdpa"


def compile_denoiser(model) -> None:
    """torch.compile the UNet and the volume nets (the networks called at every step)."""
    unet_owner, vol = model.model, model.spatial_volume
    unet_owner.diffusion_model = torch.compile(unet_owner.diffusion_model)
    vol.spatial_volume_feats = torch.compile(vol.spatial_volume_feats)
    vol.frustum_volume_feats = torch.compile(vol.frustum_volume_feats)


def time_step(model, inputs, device: str, repeats: int, cfg_scale: float, bvn, autocast: bool = False):
    """-> (eps of the last run, [seconds per run], first-run seconds); run 0 is the warm-up."""
    x, t, cond = inputs
    times, eps = [], None
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.split(":")[0], torch.bfloat16, enabled=autocast):
            eps = model.predict_eps(x, t, cond, cfg_scale, bvn).float()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return eps, times[1:], times[0]


def variants(precisions: list[str], candidates: bool, compile_too: bool) -> list[tuple[str, str, dict]]:
    """(label, precision, options) rows in run order (the fp32 rows first: bf16 casts the model in place)."""
    rows = []
    if candidates:
        rows.append(("fp32, official algorithm", "fp32", dict(official=True)))
    for p in [p for p in precisions if p == "fp32"]:
        rows.append(("fp32", p, {}))
    if candidates:
        rows.append(("fp32 weights + autocast bf16", "fp32", dict(autocast=True)))
    for p in [p for p in precisions if p != "fp32"]:
        rows.append((p, p, {}))
        if candidates:
            rows.append((f"{p}, NCHW conv weights", p, dict(channels_last=False)))
        if compile_too:
            rows.append((f"{p} + compile", p, dict(compile=True)))
    return rows


def bench_config(name: str, device: str, rows, repeats: int, candidate_repeats: int, bvn, cfg_scale: float):
    torch.manual_seed(0)
    model = build_model(model_cfg(name)).eval().requires_grad_(False)
    reinit_zero_layers(model)
    model = model.to(device)
    N, C, h = model.view_num, model.latent_channels, model.latent_size
    clip = torch.randn(1, 1, model.clip_dim, device=device)
    cond = model.complete(Condition(torch.randn(1, C, h, h, device=device), clip, torch.tensor([0.3], device=device)))
    inputs = (torch.randn(1, N, C, h, h, device=device), torch.tensor([500], device=device), cond)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    out, ref, base = [], None, None
    for label, precision, opt in rows:
        model.set_precision(precision, channels_last=opt.get("channels_last"))  # None: the model's default
        if opt.get("compile"):
            compile_denoiser(model)
        set_official_algorithm(model, opt.get("official", False))
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        reps = repeats if not opt else candidate_repeats
        eps, times, first = time_step(model, inputs, device, reps, cfg_scale, bvn, opt.get("autocast", False))
        set_official_algorithm(model, False)
        med = statistics.median(times)
        if ref is None:
            ref, base = eps, med
        err = ((eps - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        out.append(dict(config=name, device=device, label=label, bvn=bvn or N, params=params, median=med,
                        min=min(times), n=len(times), ratio=med / base, err=err, peak=peak_mb(device),
                        compile_s=(first - med) if opt.get("compile") else None))
        print(f"  {name} {label}: {[round(v, 2) for v in times]} s (warm-up {first:.1f} s), err {err:.2e}",
              file=sys.stderr, flush=True)
    return out


def print_table(rows, device: str, cfg_scale: float) -> None:
    gpu = device.startswith("cuda")
    name = torch.cuda.get_device_name() if gpu else f"{torch.get_num_threads()} CPU threads"
    print(f"\nDenoiser step, 16 views x 2 CFG branches (scale {cfg_scale}), random weights; torch {torch.__version__}, "
          f"{name}\n")
    print("| config | device | precision | views/UNet call | params (M) | median s | runs | x fp32 | rel. L2 vs fp32 "
          "| compile s | peak memory MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    mem = "GPU alloc" if gpu else "process RSS"
    for r in rows:
        comp = f"{r['compile_s']:.0f}" if r["compile_s"] is not None else "-"
        print(f"| {r['config']} | {r['device']} | {r['label']} | {r['bvn']} | {r['params']:.1f} | {r['median']:.3f} | "
              f"{r['n']} | {r['ratio']:.2f} | {r['err']:.2%} | {comp} | {r['peak']:.0f} ({mem}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=None, help="model configs (default: tiny on CPU, +full on GPU)")
    ap.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, + cuda when present)")
    ap.add_argument("--precision", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                    help="default: fp32 bf16")
    ap.add_argument("--candidates", action="store_true", help="add the candidate rows (official algorithm, "
                    "autocast, bf16 with NCHW conv weights)")
    ap.add_argument("--compile", action="store_true", help="add a torch.compile row (default on a GPU)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)")
    ap.add_argument("--candidate-repeats", type=int, default=None, help="timed runs of candidate rows "
                    "(default: --repeats)")
    ap.add_argument("--batch-view-num", type=int, default=8, help="views per UNet call (0 = all)")
    ap.add_argument("--cfg-scale", type=float, default=2.0)
    args = ap.parse_args()
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        sys.exit("bench_denoiser: --device cuda but no CUDA GPU is available; use --device cpu")
    for device in devices:
        gpu = device.startswith("cuda")
        configs = args.configs or (["syncdreamer_tiny", "syncdreamer"] if gpu else ["syncdreamer_tiny"])
        rows = variants(args.precision or ["fp32", "bf16"], args.candidates, args.compile or gpu)
        table = []
        for c in configs:
            table += bench_config(c, device, rows, args.repeats, args.candidate_repeats or args.repeats,
                                  args.batch_view_num or None, args.cfg_scale)
        print_table(table, device, args.cfg_scale)


if __name__ == "__main__":
    main()
