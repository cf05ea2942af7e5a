"""Behaviour of the network beyond the golden numbers: config knobs, zero-init, checkpointing, backends."""
import pytest
import torch

from syncdreamer.diffusion.loss import training_loss
from syncdreamer.models import Condition, SyncDreamer
from syncdreamer.models.attention import attention


def micro(**over):
    """A very small model (64 px images, 8^3 volume, 8 depth samples) for fast behaviour tests."""
    kw = dict(view_num=4, image_size=64, volume_resolution=8, frustum_depth=8,
              unet=dict(model_channels=32, num_heads=4), volume=dict(spatial_dims=[8, 16, 16, 16],
                                                                    frustum_dims=[8, 16, 16, 16], encoder_dim=8))
    kw.update(over)
    return SyncDreamer(**kw)


def cond_for(m, b=2):
    g = torch.Generator().manual_seed(1)
    h = m.latent_size
    return Condition(torch.randn(b, 4, h, h, generator=g), torch.randn(b, 1, m.clip_dim, generator=g),
                     torch.tensor([0.1, -0.2][:b]))


@pytest.mark.parametrize("V,D", [(8, 8), (16, 24)])
def test_volume_resolution_and_frustum_depth_are_config(V, D):
    torch.manual_seed(0)
    m = micro(volume_resolution=V, frustum_depth=D).eval()
    c = m.complete(cond_for(m))
    x = torch.randn(2, 4, 4, 8, 8)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        vol = m.spatial_volume_for(x, t, c)
        assert vol.shape == (2, 8, V, V, V)
        fr = m.spatial_volume.construct_view_frustum_volume(vol, m.embed_time(t), c.view_embed, m.poses, m.Ks,
                                                            torch.tensor([[0, 3], [1, 2]]))
        assert {k: tuple(v.shape) for k, v in fr.items()} == {
            8: (4, 8, D, 8, 8), 4: (4, 16, D // 2, 4, 4), 2: (4, 16, D // 4, 2, 2), 1: (4, 16, D // 8, 1, 1)}
        assert m.predict_eps(x, t, c, 2.0, 3).shape == x.shape


@pytest.mark.parametrize("key,value", [("volume_resolution", 20), ("frustum_depth", 12), ("image_size", 60)])
def test_bad_structural_numbers_fail_clearly(key, value):
    with pytest.raises(ValueError, match=f"{key}={value} must be divisible by 8"):
        micro(**{key: value})


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match=r"unknown UNetConfig keys \['model_chanels'\]"):
        micro(unet=dict(model_chanels=32))


def test_fresh_depth_attention_is_identity_so_model_equals_zero123():
    """Zero-initialised last convs: at step 0 SyncDreamer's UNet computes exactly the Zero123 UNet."""
    torch.manual_seed(0)
    sync = micro().eval()
    base = micro(unet=dict(model_channels=32, num_heads=4, depth_attention=False)).eval()
    missing, unexpected = base.load_state_dict(sync.state_dict(), strict=False)
    assert not missing and all("conditions" in k for k in unexpected)
    c, x, t = cond_for(sync), torch.randn(2, 4, 4, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(sync.predict_eps(x, t, c), base.predict_eps(x, t, base.complete(cond_for(base))))


def test_chunking_and_batched_cfg_do_not_change_results():
    torch.manual_seed(0)
    m = micro().eval()
    for p in m.parameters():  # make the zero-init blocks matter
        p.data.add_(0.02 * torch.randn_like(p))
    c, x, t = m.complete(cond_for(m)), torch.randn(2, 4, 4, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        full = m.predict_eps(x, t, c, 2.5, None)
        chunked = m.predict_eps(x, t, c, 2.5, 3)
        cond_only = m.predict_eps(x, t, c, 1.0, 2)
        uncond = m.predict_eps(x, t, c, 0.0, None)  # eps_u + 0 * (eps_c - eps_u): the unconditional branch
        # reference for the unconditional branch (spec: CFG): the UNet on the same noisy views with the CLIP
        # token, the concat latent and the frustum features (every scale) all zero
        t_embed = m.embed_time(t)
        views = torch.arange(4).expand(2, -1)
        frustum, tokens, concat = m.target_view_inputs(m.spatial_volume_for(x, t, c, t_embed), t_embed, c, views)
        reference = m.model(x.flatten(0, 1), t.repeat_interleave(4), torch.zeros_like(tokens),
                            {k: torch.zeros_like(v) for k, v in frustum.items()}, torch.zeros_like(concat))
    torch.testing.assert_close(full, chunked, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, cond_only) and not torch.allclose(uncond, cond_only, atol=1e-3)
    torch.testing.assert_close(uncond, reference.view_as(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, uncond + 2.5 * (cond_only - uncond), atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_loss_and_grads_and_frozen_parts_get_none():
    losses, grads = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = micro(use_checkpoint=ckpt)
        for p in m.parameters():
            p.data.add_(0.02 * torch.randn_like(p))
        m.freeze_for_training()
        m.train()
        c = cond_for(m)
        x0, noise = torch.randn(2, 4, 4, 8, 8), torch.randn(2, 4, 4, 8, 8)
        loss, _ = training_loss(m, x0, c, torch.tensor([5, 600]), noise, torch.tensor([[1], [3]]))
        loss.backward()
        losses.append(loss.item())
        groups = m.trainable_parameter_groups()
        grads.append([p.grad.clone() for g in groups.values() for p in g])
        trainable = {id(p) for g in groups.values() for p in g}
        assert all(p.grad is None and not p.requires_grad for p in m.parameters() if id(p) not in trainable)
        assert all(g is not None for g in grads[-1])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def reference_attention(q, k, v):
    """Plain multi-head attention written out here: softmax(q k^T / sqrt(d)) v over (B, heads, L, d)."""
    weights = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.einsum("bhqk,bhkd->bhqd", weights.softmax(-1), v.double()).to(q.dtype)


def test_attention_backends_match_a_plain_reference():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 16, 8, generator=g)
    k, v = torch.randn(2, 4, 24, 8, generator=g), torch.randn(2, 4, 24, 8, generator=g)  # cross-attention
    expected = reference_attention(q, k, v)
    # off CUDA the xformers backend falls back to SDPA: it must still compute attention
    for backend in ("sdpa", "math", "xformers"):
        torch.testing.assert_close(attention(q, k, v, backend), expected, atol=1e-5, rtol=1e-5, msg=backend)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, "flash9")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU (needs CUDA for the xformers kernel)")
def test_xformers_kernel_matches_the_reference_on_cuda():
    """The real xformers kernel (its (B, L, heads, d) layout) against the plain reference, fp32 and fp16."""
    from syncdreamer.models.attention import _xformers_available

    if not _xformers_available():
        pytest.skip("optional package xformers not installed")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 64, generator=g).cuda() for n in (40, 77, 77))
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-3)):
        a, b, c = q.to(dtype), k.to(dtype), v.to(dtype)
        torch.testing.assert_close(attention(a, b, c, "xformers"), reference_attention(a, b, c), atol=tol, rtol=tol)


def test_condition_dropping_zeroes_inputs_at_the_configured_rates():
    torch.manual_seed(0)
    m = micro(condition_drop=dict(drop_all=0.25, drop_concat=0.25, drop_volume=0.25, drop_clip=0.25))
    keep = m.model._drop_masks(20000, "cpu")
    rates = {k: 1 - v.mean().item() for k, v in keep.items()}
    for k in ("concat", "volume", "clip"):  # its own band + the "all" band
        assert rates[k] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="sum to more than 1"):
        micro(condition_drop=dict(drop_all=0.6, drop_clip=0.6))


def test_view_embedding_convention():
    m = micro(view_num=16)
    e = m.view_embedding(torch.tensor([0.0, 0.5236]))
    assert e.shape == (2, 16, 4)
    torch.testing.assert_close(e[0, :, 0], torch.full((16,), -0.5236), atol=1e-4, rtol=0)  # input 0 deg vs 30 deg
    torch.testing.assert_close(e[1, :, 0], torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(e[0, 4, 1:], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)  # 90 deg


@pytest.mark.parametrize("steps", [1, 3, 7, 50, 200, 1000])
def test_ddim_timesteps_rule(steps):
    from syncdreamer.diffusion.sampler import ddim_timesteps

    ts = ddim_timesteps(steps)
    assert len(ts) == steps and ts[0] == 1 and ts[-1] <= 1000 and (sorted(set(ts)) == list(ts))
    if 1000 % steps == 0:  # the official rule
        assert ts.tolist() == [t + 1 for t in range(0, 1000, 1000 // steps)]
    with pytest.raises(ValueError, match="sample_steps"):
        ddim_timesteps(0)


def test_without_depth_attention_no_volume_is_computed(monkeypatch):
    """ablation_no_volume: the Zero123 baseline never builds the spatial volume or the frustums."""
    torch.manual_seed(0)
    m = micro(unet=dict(model_channels=32, num_heads=4, depth_attention=False)).eval()

    def boom(*a, **k):
        raise AssertionError("volume computed without depth attention")

    monkeypatch.setattr(m.spatial_volume, "construct_spatial_volume", boom)
    monkeypatch.setattr(m.spatial_volume, "construct_view_frustum_volume", boom)
    c, x = m.complete(cond_for(m)), torch.randn(2, 4, 4, 8, 8)
    with torch.no_grad():
        assert m.predict_eps(x, torch.tensor([3, 700]), c, 2.0, 2).shape == x.shape
        loss, _ = training_loss(m, x, c, torch.tensor([3, 700]), torch.randn_like(x), torch.tensor([[0], [1]]))
    assert torch.isfinite(loss)
