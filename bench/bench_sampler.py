"""Sampling time and peak memory per object (16 views, CFG) for the synchronized samplers; prints a markdown table.

    .venv/bin/python bench/bench_sampler.py                       # tiny config on CPU (+ full config on a GPU)
    .venv/bin/python bench/bench_sampler.py --steps 50 --measure-steps 3 --configs syncdreamer_tiny

Random weights (timing does not depend on them). On CPU only ``--measure-steps`` denoising steps are timed
(after one warm-up step) and the time per object is extrapolated to ``--steps`` steps; the table says so.
CPU peak memory is the process's peak resident set size (ru_maxrss, includes the model and Python); GPU
peak memory is ``torch.cuda.max_memory_allocated`` during sampling + decoding.
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))


def build(config: str, device: torch.device):
    from hydra import compose, initialize_config_dir

    from syncdreamer.checkpoints import build_model

    with initialize_config_dir(config_dir=str(REPO / "conf" / "model"), version_base="1.3"):
        cfg = compose(config_name=config)
    torch.manual_seed(0)
    return build_model(cfg).to(device).eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bench_one(model, device, precision: str, steps: int, measure: int, cfg_scale: float, batch_view_num):
    """-> dict(per_step_s, total_s, decode_s, peak) for one object (B = 1)."""
    from syncdreamer.diffusion.sampler import SyncDDIMSampler

    compiled = precision.endswith("+compile")
    precision = precision.split("+")[0]
    model.set_precision(precision)
    if compiled:
        from bench_denoiser import compile_denoiser

        compile_denoiser(model)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()  # VAE / CLIP
    S = model.image_size
    img = torch.rand(1, 3, S, S, device=device) * 2 - 1
    sampler = SyncDDIMSampler(model, steps=steps, cfg_scale=cfg_scale, batch_view_num=batch_view_num)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with ctx:
        t0 = time.perf_counter()
        cond = model.prepare_condition(img, torch.tensor([0.5], device=device))
        sync(device)
        cond_s = time.perf_counter() - t0
        x = torch.randn(1, model.view_num, model.latent_channels, model.latent_size, model.latent_size,
                        device=device)
        ts = sampler.timesteps[::-1]
        t = torch.full((1,), int(ts[0]), device=device, dtype=torch.long)
        sampler.step(x, model.predict_eps(x, t, cond, cfg_scale, batch_view_num), len(ts) - 1)  # warm-up
        sync(device)
        n = min(measure, steps) if measure else steps
        t0 = time.perf_counter()
        for i in range(n):
            t = torch.full((1,), int(ts[i]), device=device, dtype=torch.long)
            x = sampler.step(x, model.predict_eps(x, t, cond, cfg_scale, batch_view_num), len(ts) - 1 - i)
        sync(device)
        per_step = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        model.decode_first_stage(x[0])
        sync(device)
        decode_s = time.perf_counter() - t0
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (RSS)"
    return dict(per_step_s=per_step, total_s=cond_s + per_step * steps + decode_s, decode_s=decode_s, peak=peak,
                measured=n)


def ode_model(config: str, weights: str | None):
    """The denoiser of ``config`` (no VAE / CLIP) with ``weights`` or random weights (zero layers re-initialised)."""
    from bench_denoiser import model_cfg, reinit_zero_layers

    from syncdreamer.checkpoints import build_model

    torch.manual_seed(0)
    model = build_model(model_cfg(config)).eval().requires_grad_(False)
    if weights:
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(weights).items()})
    else:
        reinit_zero_layers(model)
    return model


def read_input(path: str, size: int) -> torch.Tensor:
    """A picture -> (1, 3, size, size) in [-1, 1], through generate.py's loader and framing (pad to square)."""
    import numpy as np

    from syncdreamer.pipelines.preprocess import load_image, prepare_input

    pic = load_image(path)
    if pic.shape[-1] == 3:
        pic = np.concatenate([pic, np.full(pic.shape[:2] + (1,), 255, np.uint8)], -1)
    return prepare_input(pic, -1, size)[0][None]


def ode_error_table(args) -> int:
    """Which solver / step count reaches the deterministic DDIM-50 error on the probability-flow ODE.

    For each seed: one random condition and start noise; the reference is DDIM with eta = 0 and
    ``--reference-steps`` steps (the ODE solved finely); each sampler's final latents are compared with it by the
    relative L2 error. The proxy-model metrics (mask IoU, PSNR, Chamfer) are not used here.
    """
    from syncdreamer.diffusion.diffusers_samplers import SyncDPMSolverSampler, SyncUniPCSampler
    from syncdreamer.diffusion.sampler import SyncDDIMSampler
    from syncdreamer.models import Condition

    config = (args.configs or ["syncdreamer_tiny"])[0]
    if args.checkpoint:  # a trained model (ours or official), its EMA weights when it has them
        from syncdreamer.checkpoints import CheckpointError, load_model

        try:
            model = load_model(args.checkpoint).requires_grad_(False)
        except CheckpointError as err:
            sys.exit(f"error: {err}")
        config = f"{args.checkpoint} ({model.checkpoint_info['weights']} weights, {model.image_size} px)"
    else:
        model = ode_model(config, args.weights)
    model.set_precision(args.ode_precision)
    bvn, cfg = (args.batch_view_num or [None])[0], args.cfg_scale
    runs = [("DDIM, eta 0", SyncDDIMSampler, dict(eta=0.0), 50)]
    runs += [("DDIM, eta 0", SyncDDIMSampler, dict(eta=0.0), s) for s in args.solver_steps]
    end = dict(final_sigmas_type="sigma_min")  # end at alphas_cumprod[0], like DDIM and the reference
    runs += [(name, cls, end, s) for name, cls in (("DPM-Solver++ (2M)", SyncDPMSolverSampler),
                                                 ("UniPC (bh2)", SyncUniPCSampler)) for s in args.solver_steps]
    errs: dict[tuple[str, int], list[float]] = {}
    C, h, N = model.latent_channels, model.latent_size, model.view_num
    if args.input:  # a real input view through the model's VAE and CLIP (elevation 30 degrees), same for all seeds
        from syncdreamer.pipelines.errors import InputError

        try:
            picture = read_input(args.input, model.image_size)
        except InputError as err:
            sys.exit(f"error: {err}")
        real = model.prepare_condition(picture, torch.tensor([0.5236]), sample=False)
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        if args.input:
            cond = real
        else:
            latent, clip = torch.randn(1, C, h, h, generator=g), torch.randn(1, 1, model.clip_dim, generator=g)
            cond = model.complete(Condition(latent, clip, torch.tensor([0.3])))
        x_T = torch.randn(1, N, C, h, h, generator=g)
        ref = SyncDDIMSampler(model, steps=args.reference_steps, eta=0.0, cfg_scale=cfg, batch_view_num=bvn).sample(
            cond, x_T=x_T)
        for name, cls, kw, steps in runs:
            out = cls(model, steps=steps, cfg_scale=cfg, batch_view_num=bvn, **kw).sample(cond, x_T=x_T)
            errs.setdefault((name, steps), []).append(((out - ref).norm() / ref.norm()).item())
            print(f"  seed {seed} {name} {steps}: {errs[(name, steps)][-1]:.4f}", file=sys.stderr, flush=True)
    target = max(errs[("DDIM, eta 0", 50)])
    weights = "" if args.checkpoint else (", weights " + args.weights if args.weights else ", random weights")
    print(f"\nODE error of the final latents against DDIM (eta 0) with {args.reference_steps} steps; {config}"
          f"{weights}, {args.ode_precision}, condition {args.input or 'random'}, CFG {cfg}, seeds {args.seeds}\n")
    print("| sampler | steps | rel. L2 error (mean over seeds) | max over seeds | <= DDIM-50 (eta 0) |")
    print("|---|---|---|---|---|")
    for (name, steps), e in errs.items():
        ok = "yes" if max(e) <= target else "no"
        print(f"| {name} | {steps} | {sum(e) / len(e):.4f} | {max(e):.4f} | {ok} |")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=None, help="model configs (default: tiny on CPU, + full on GPU)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--measure-steps", type=int, default=None, help="steps timed (default: 2 on CPU, all on GPU)")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--batch-view-num", type=int, nargs="*", default=[8, 16])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", nargs="*", default=None, help="fp32 bf16 bf16+compile (default: fp32 on CPU; "
                   "fp32 bf16 bf16+compile on a GPU)")
    p.add_argument("--ode-error", action="store_true", help="instead: the sampler comparison on the ODE error "
                   "against a long deterministic DDIM run (see ode_error_table)")
    p.add_argument("--reference-steps", type=int, default=500, help="500 = every 2nd timestep; the official timestep "
                   "rule at 1000 steps would visit t = 1000, outside the schedule")
    p.add_argument("--solver-steps", type=int, nargs="*", default=[10, 15, 20, 25])
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--weights", default=None, help="safetensors denoiser weights for --ode-error (e.g. the golden "
                   "denoiser_tiny fixture); default: random with the zero-initialised layers re-initialised")
    p.add_argument("--checkpoint", default=None, help="--ode-error on a trained model (our Lightning checkpoint, "
                   "e.g. the one `make demo` trains, or the official one) instead of --configs / --weights")
    p.add_argument("--input", default=None, help="--ode-error: condition on this picture (needs --checkpoint with "
                   "its VAE and CLIP); default: a random condition latent and CLIP embedding per seed")
    p.add_argument("--ode-precision", default="fp32", choices=["fp32", "bf16"],
                   help="--ode-error: the denoiser's precision")
    args = p.parse_args(argv)
    for flag, path in (("--checkpoint", args.checkpoint), ("--input", args.input), ("--weights", args.weights)):
        if path and not Path(path).is_file():
            p.error(f"{flag} {path}: no such file")
    if args.input and not args.checkpoint:
        p.error("--input needs --checkpoint (a model with its VAE and CLIP to encode the picture)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ode_error:
        return ode_error_table(args)
    rows = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        configs = args.configs or (["syncdreamer_tiny"] if device.type == "cpu" else ["syncdreamer_tiny", "syncdreamer"])
        precisions = args.precision or (["fp32"] if device.type == "cpu" else ["fp32", "bf16", "bf16+compile"])
        measure = args.measure_steps if args.measure_steps is not None else (2 if device.type == "cpu" else 0)
        for config in configs:
            model = build(config, device)
            for precision in precisions:
                for bvn in args.batch_view_num:
                    r = bench_one(model, device, precision, args.steps, measure, args.cfg_scale, bvn)
                    rows.append((config, str(device), precision, bvn, r))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    dev_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\nSampling one object: 16 views, {args.steps} DDIM steps, CFG {args.cfg_scale} (both branches in one "
          f"UNet call), B=1; torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {dev_name}\n")
    print("| config | device | precision | batch_view_num | s / step | s / object | VAE decode s | peak memory | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config, dev, prec, bvn, r in rows:
        note = f"{r['measured']} steps timed, extrapolated" if r["measured"] < args.steps else "all steps timed"
        print(f"| {config} | {dev} | {prec} | {bvn} | {r['per_step_s']:.3f} | {r['total_s']:.1f} | "
              f"{r['decode_s']:.2f} | {r['peak']} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
