"""bf16 denoiser (weights cast once), the exact attention shortcuts, and the UniPC sampler."""
import pytest
import torch

from golden_utils import Golden, denoiser_kwargs, fixture_params
from syncdreamer.models import Condition, SyncDreamer
from syncdreamer.models import precision as prec
from syncdreamer.models.attention import CrossAttention
from syncdreamer.models.depth_attention import DepthAttention

BF16_EPS_BUDGET = 0.02  # rel. L2 of one step's eps against fp32 (issue 14)


@pytest.fixture(scope="module", params=fixture_params("denoiser"))
def golden(request):
    return Golden(request.param)


def fresh_model(g) -> SyncDreamer:
    model = SyncDreamer(**denoiser_kwargs(g.config)).eval()
    model.load_state_dict(g.weights, strict=True)
    return model


def cfg_step(model, g, t=500):
    T = g.tensors
    cond = model.complete(Condition(T["input_latent_scaled"], T["clip_embed_raw"], T["elevation_rad"]))
    with torch.no_grad():
        return model.predict_eps(T["x_t"], torch.tensor([t]), cond, 2.0, 8)


def rel_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_step_within_error_budget_and_weights_cast_once(golden, channels_last):
    ref = cfg_step(fresh_model(golden), golden)
    model = fresh_model(golden).set_precision("bf16", channels_last=channels_last)
    unet = model.model.diffusion_model
    assert unet.input_blocks[0][0].weight.dtype == torch.bfloat16
    assert model.spatial_volume.frustum_volume_feats.conv0.weight.dtype == torch.bfloat16
    assert model.cc_projection.weight.dtype == torch.bfloat16
    assert unet.out[0].weight.dtype == torch.float32  # norms stay float32
    assert model.alphas_cumprod.dtype == model.poses.dtype == torch.float32  # schedule and geometry stay float32
    eps = cfg_step(model, golden)
    assert eps.dtype == torch.float32
    err = rel_l2(eps, ref)
    assert 0 < err <= BF16_EPS_BUDGET  # > 0: the step really ran in bf16


def test_reduced_precision_stores_conv_weights_nhwc_by_default_and_fp32_nchw(golden):
    """The fast bf16 step (0.37x fp32 at full size on avx512_bf16, 0.53x without NHWC) is the default one:
    ``set_precision("bf16")`` must leave the conv weights channels-last, fp32 and ``channels_last=False`` NCHW."""
    model = fresh_model(golden)
    conv2d = lambda: model.model.diffusion_model.input_blocks[0][0].weight  # noqa: E731
    conv3d = lambda: next(m for m in model.spatial_volume.modules() if isinstance(m, torch.nn.Conv3d)).weight  # noqa: E731
    assert conv2d().is_contiguous() and conv3d().is_contiguous() and model.channels_last is False
    model.set_precision("bf16")
    assert model.channels_last is True and conv2d().dtype == conv3d().dtype == torch.bfloat16
    assert conv2d().is_contiguous(memory_format=torch.channels_last) and not conv2d().is_contiguous()
    assert conv3d().is_contiguous(memory_format=torch.channels_last_3d) and not conv3d().is_contiguous()
    model.set_precision("bf16", channels_last=False)
    assert conv2d().is_contiguous() and conv3d().is_contiguous() and model.channels_last is False
    model.set_precision("bf16").set_precision("fp32")  # fp32's default undoes the NHWC that bf16 left
    assert conv2d().dtype == conv3d().dtype == torch.float32 and model.channels_last is False
    assert conv2d().is_contiguous() and conv3d().is_contiguous()


def test_bf16_error_budget_holds_across_timesteps(golden):
    base, model = fresh_model(golden), fresh_model(golden).set_precision("bf16")
    for t in (981, 21):
        assert rel_l2(cfg_step(model, golden, t), cfg_step(base, golden, t)) <= BF16_EPS_BUDGET


def test_unknown_precision_is_named(golden):
    with pytest.raises(ValueError, match="precision must be one of"):
        fresh_model(golden).set_precision("int8")


def test_single_token_cross_attention_shortcut_is_exact():
    torch.manual_seed(0)
    attn = CrossAttention(32, 24, heads=4, dim_head=8).eval()
    x, ctx = torch.randn(3, 50, 32), torch.randn(3, 1, 24)
    fast = attn(x, ctx)
    CrossAttention.single_token_shortcut = False
    try:
        full = attn(x, ctx)
    finally:
        CrossAttention.single_token_shortcut = True
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(attn(x, torch.randn(3, 1, 24)), fast)  # the token still matters


def test_training_mode_takes_the_full_path_so_ddp_sees_every_parameter():
    """DDP (find_unused_parameters=False) fails when a trainable parameter takes no part in the loss: the
    inference shortcut must be off in training mode."""
    torch.manual_seed(0)
    attn = CrossAttention(32, 24, heads=4, dim_head=8).train()
    attn(torch.randn(2, 10, 32), torch.randn(2, 1, 24)).sum().backward()
    assert all(p.grad is not None for p in attn.parameters())


def test_depth_attention_sdpa_matches_the_einsum_reference():
    torch.manual_seed(0)
    attn = DepthAttention(16, 12, heads=2, dim_head=6).eval()
    x, ctx = torch.randn(2, 16, 5, 4), torch.randn(2, 12, 7, 5, 4)
    sdpa = attn(x, ctx)
    attn.backend = "math"
    torch.testing.assert_close(sdpa, attn(x, ctx), atol=1e-5, rtol=1e-5)


def test_default_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert prec.default_precision("cpu") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert prec.default_precision("cpu") == "bf16"


class _LinearEpsModel:
    """eps(x, t) = a(t) x + b: a smooth probability-flow ODE, with the model's interface for samplers."""

    view_num, latent_channels, latent_size = 4, 2, 3

    def __init__(self):
        from syncdreamer.models.schedule import register_schedule

        holder = torch.nn.Module()
        register_schedule(holder)
        self.betas, self.alphas_cumprod = holder.betas, holder.alphas_cumprod
        self.calls = []

    def complete(self, cond):
        return cond

    def predict_eps(self, x, t, cond, cfg_scale, batch_view_num):
        self.calls.append((tuple(x.shape), int(t[0]), cfg_scale, batch_view_num))
        a = 0.3 + 0.4 * t.double().view(-1, 1, 1, 1, 1) / 1000
        return (a * x + 0.05).to(x.dtype)


class _Cond:
    batch_size = 1
    input_latent = torch.zeros(1, 2, 3, 3)


def test_unipc_steps_all_views_jointly_and_beats_ddim_at_equal_steps():
    from syncdreamer.diffusion.diffusers_samplers import SyncUniPCSampler, sampler_name
    from syncdreamer.diffusion.sampler import SyncDDIMSampler

    x_T = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    m = _LinearEpsModel()
    s = SyncUniPCSampler(m, steps=10, cfg_scale=2.5, batch_view_num=2, final_sigmas_type="sigma_min",
                         timestep_spacing="trailing", steps_offset=0)  # the interval [999, 0] of the reference
    out = s.sample(_Cond(), x_T=x_T)
    assert sampler_name(s) == "unipc"
    assert len(m.calls) == 10 and all(c[0] == (1, 4, 2, 3, 3) and c[2:] == (2.5, 2) for c in m.calls)
    ref = SyncDDIMSampler(_LinearEpsModel(), steps=500, eta=0.0).sample(_Cond(), x_T=x_T)
    ddim = SyncDDIMSampler(_LinearEpsModel(), steps=10, eta=0.0).sample(_Cond(), x_T=x_T)
    assert rel_l2(out, ref) < 0.5 * rel_l2(ddim, ref)


def test_sampler_fast_is_unipc_with_20_steps_on_the_reference_interval():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from syncdreamer.diffusion.diffusers_samplers import SyncUniPCSampler

    conf = Path(__file__).resolve().parents[1] / "conf" / "sampler" / "fast.yaml"
    cfg = OmegaConf.create({"cfg_scale": 2.0, "batch_view_num": 8, "sampler": OmegaConf.load(conf)})
    s = instantiate(cfg.sampler, _convert_="all")(_LinearEpsModel())
    assert isinstance(s, SyncUniPCSampler) and len(s.timesteps) == 20
    assert int(s.timesteps[0]) == 999 and s.batch_view_num == 8


def test_bf16_training_of_the_3d_nets_runs_them_in_fp32_on_cpu_and_keeps_gradients_finite():
    """oneDNN's bf16 Conv3d weight gradient is intermittently non-finite for small volumes (torch 2.14.1; it made
    the bf16-mixed resume test fail ~1 run in 8 with a NaN in spatial_volume.*.conv4_*): under CPU bf16 autocast
    with grad the 3D nets must run in float32, and keep bf16 for inference."""
    from syncdreamer.models.volume import FrustumTV3DNet, SpatialTime3DNet

    torch.manual_seed(0)
    net = SpatialTime3DNet(8, 16, dims=(16, 32, 48, 64))
    frustum = FrustumTV3DNet(8, 16, 4, dims=(16, 32, 48, 64))
    seen = []

    def hook(module, args):
        seen.append(args[0].dtype if not torch.is_autocast_enabled("cpu") else torch.get_autocast_dtype("cpu"))

    for conv in (m for n in (net, frustum) for m in n.modules() if isinstance(m, torch.nn.Conv3d)):
        conv.register_forward_pre_hook(hook)
    x, t, v = torch.randn(2, 8, 8, 8, 8), torch.randn(2, 16), torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, fout = net(x, t), frustum(x, t, v)
    assert seen and set(seen) == {torch.float32} and out.dtype == fout[8].dtype == torch.float32
    seen.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(x, t)
    assert seen and set(seen) == {torch.bfloat16}  # inference keeps bf16
    for _ in range(30):  # the bug showed on ~2 % of single-conv passes; the net has several small convs
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(torch.randn(2, 8, 8, 8, 8), t)
        out.float().square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
