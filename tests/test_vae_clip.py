"""KLAutoencoder and CLIPImageEmbedder: full-size key layout vs the official table, conventions, errors,
and the code-free reader of OpenAI's TorchScript CLIP archive."""
import io
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from golden_utils import missing_fixture, reference_table
from syncdreamer.models import clip as clip_mod
from syncdreamer.models.clip import CLIPImageEmbedder, load_openai_clip_state_dict
from syncdreamer.models.vae import KLAutoencoder, convert_official_vae_state_dict

TABLE = reference_table()


def _official_table(prefix: str) -> dict[str, tuple]:
    """{key without prefix: shape} for the rows of the official state-dict table under ``prefix``."""
    if not TABLE.is_file():
        missing_fixture(f"official key table missing: {TABLE}")
    out = {}
    for line in TABLE.read_text().splitlines():
        if line.startswith("#") or not line.startswith(prefix):
            continue
        key, shape, _dtype = line.split("\t")
        out[key[len(prefix):]] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def _tiny_vae(**kw) -> KLAutoencoder:
    args = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4)
    args.update(kw)
    torch.manual_seed(0)
    return KLAutoencoder(**args).eval()


def _tiny_clip(**kw) -> CLIPImageEmbedder:
    args = dict(image_size=28, patch_size=14, width=64, layers=1, output_dim=16, vocab_size=10,
                context_length=5, transformer_width=8)
    args.update(kw)
    torch.manual_seed(0)
    return CLIPImageEmbedder(**args).eval()


# ----------------------------------------------------------------------------------------- full-size layout
def test_full_size_clip_keys_and_shapes_equal_official():
    table = _official_table("clip_image_encoder.")
    assert len(table) == 302
    with torch.device("meta"):
        emb = CLIPImageEmbedder()
    ours = {k: tuple(v.shape) for k, v in emb.state_dict().items()}
    assert ours == table  # keys "model.*" == official keys under clip_image_encoder.
    assert set(emb.model.state_dict()) == {k[len("model."):] for k in table}
    assert "mean" not in ours and "std" not in ours  # non-persistent, like the official buffers


def test_full_size_vae_keys_and_shapes_equal_official():
    table = _official_table("first_stage_model.")
    assert len(table) == 248
    official = {k: torch.empty(s, device="meta") for k, s in table.items()}
    converted = convert_official_vae_state_dict(official)
    with torch.device("meta"):
        vae = KLAutoencoder()
    ours = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours  # one-to-one: 248 keys each
    assert len(converted) == len(official) == len(ours)
    assert vae.load_official_state_dict(official) == ([], [])
    assert sum(v.numel() for v in converted.values()) == 83_653_863


# ----------------------------------------------------------------------------------------- VAE behaviour
def _official_names_for(vae: KLAutoencoder) -> dict[str, str]:
    """official key -> our key, for a model with the official level structure (names from the full table)."""
    assert vae.ch_mult == (1, 2, 4, 4) and vae.num_res_blocks == 2
    keep = _official_table("first_stage_model.")
    groups = {}
    for k, s in keep.items():  # weight and bias of one module convert together
        groups.setdefault(k.rpartition(".")[0], {})[k] = torch.empty(s, device="meta")
    out = {}
    for part in groups.values():
        got = convert_official_vae_state_dict(part, len(vae.ch_mult))
        assert len(got) == len(part)
        for k in part:
            (ours,) = [o for o in got if o.rpartition(".")[2] == k.rpartition(".")[2]]
            out[k] = ours
    return out


def test_vae_loads_official_names_and_values():
    vae = _tiny_vae(ch_mult=(1, 2, 4, 4), num_res_blocks=2)
    own = vae.state_dict()
    names = _official_names_for(vae)
    assert sorted(names.values()) == sorted(own)
    torch.manual_seed(1)
    official = {}
    for k, ours in names.items():
        t = torch.randn(own[ours].shape)
        if "attn_1" in k and k.endswith("weight") and t.ndim == 2:  # 1x1 conv in the official layout
            t = t[:, :, None, None]
        official[k] = t
    vae.load_official_state_dict(official)
    for k, ours in names.items():
        assert torch.equal(vae.state_dict()[ours], official[k].reshape(own[ours].shape)), k


def test_vae_encode_decode_conventions():
    vae = _tiny_vae(scale_factor=0.5)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    noise = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        moments = vae.moments(x)
        mean, logvar, std = vae.posterior(x)
        assert moments.shape == (2, 8, 8, 8)
        torch.testing.assert_close(mean, moments[:, :4])
        torch.testing.assert_close(logvar, moments[:, 4:].clamp(-30, 20))
        torch.testing.assert_close(std, torch.exp(0.5 * logvar))
        torch.testing.assert_close(vae.encode(x, noise=noise), (mean + std * noise) * 0.5)
        torch.testing.assert_close(vae.encode(x, sample=False), mean * 0.5)
        torch.manual_seed(3)
        drawn = vae.encode(x)
        torch.manual_seed(3)
        torch.testing.assert_close(drawn, (mean + std * torch.randn_like(mean)) * 0.5)
        z = vae.encode(x, sample=False)
        img = vae.decode(z)
        assert img.shape == (2, 3, 16, 16)
        torch.testing.assert_close(img, vae.vae.decode(mean).sample)  # decode undoes the scale
        vae.enable_slicing()
        torch.testing.assert_close(vae.decode(z), img, atol=1e-5, rtol=1e-5)
        vae.enable_slicing(False)


def test_vae_logvar_is_clamped():
    vae = _tiny_vae()
    with torch.no_grad():
        vae.vae.quant_conv.bias[4:] = 100.0  # huge logvar
        _, logvar, std = vae.posterior(torch.zeros(1, 3, 8, 8))
    assert logvar.max().item() == 20.0
    torch.testing.assert_close(std, torch.full_like(std, float(torch.exp(torch.tensor(10.0)))))


def test_vae_bad_inputs_and_config():
    vae = _tiny_vae()
    with pytest.raises(ValueError, match="expected an image batch"):
        vae.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="divisible by 2"):
        vae.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="noise shape"):
        vae.encode(torch.zeros(1, 3, 16, 16), noise=torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="expected a latent"):
        vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="embed_dim"):
        KLAutoencoder(ch=32, z_channels=4, embed_dim=3)
    with pytest.raises(ValueError, match="attn_resolutions"):
        KLAutoencoder(ch=32, attn_resolutions=(32,))
    with pytest.raises(ValueError, match="divisible by norm_num_groups"):
        KLAutoencoder(ch=20)


def test_vae_official_loading_reports_problems():
    vae = _tiny_vae(ch_mult=(1, 2, 4, 4), num_res_blocks=2)
    own = vae.state_dict()
    names = _official_names_for(vae)
    official = {k: own[v][..., None, None] if own[v].ndim == 2 else own[v] for k, v in names.items()}
    assert vae.load_official_state_dict(official) == ([], [])
    with pytest.raises(ValueError, match="first_stage_model"):
        convert_official_vae_state_dict({"first_stage_model." + k: v for k, v in official.items()})
    with pytest.raises(ValueError, match=r"not official VAE keys.*loss\.logvar"):
        convert_official_vae_state_dict({**official, "loss.logvar": torch.zeros(())})
    with pytest.raises(ValueError, match=r"unexpected keys \['loss.logvar'\]"):
        vae.load_official_state_dict({**official, "loss.logvar": torch.zeros(())})
    dropped = dict(official)
    del dropped["decoder.up.1.upsample.conv.bias"]
    with pytest.raises(ValueError, match="missing keys.*upsamplers"):
        vae.load_official_state_dict(dropped)
    missing, unexpected = vae.load_official_state_dict(dropped, strict=False)
    assert "vae.decoder.up_blocks.2.upsamplers.0.conv.bias" in missing
    bad = {**official, "quant_conv.weight": torch.zeros(8, 8, 3, 3)}
    with pytest.raises(ValueError, match="shape mismatch.*quant_conv"):
        vae.load_official_state_dict(bad, strict=False)


# ----------------------------------------------------------------------------------------- CLIP behaviour
def test_clip_preprocess_and_embedding():
    emb = _tiny_clip()
    assert all(not p.requires_grad for p in emb.parameters())
    mean = torch.tensor(clip_mod.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(clip_mod.CLIP_STD).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    # same size: align_corners=True bicubic is the identity
    torch.testing.assert_close(emb.preprocess(x), ((x + 1) / 2 - mean) / std)
    big = torch.rand(1, 3, 40, 40) * 2 - 1
    ref = torch.nn.functional.interpolate(big, (28, 28), mode="bicubic", align_corners=True)
    torch.testing.assert_close(emb.preprocess(big), ((ref + 1) / 2 - mean) / std)
    other = torch.nn.functional.interpolate(big, (28, 28), mode="bicubic", align_corners=False)
    assert (emb.preprocess(big) - ((other + 1) / 2 - mean) / std).abs().max() > 1e-3
    with torch.no_grad():
        out = emb(x)
        assert out.shape == (2, 1, 16) and out.dtype == torch.float32
        torch.testing.assert_close(out[:, 0], emb.model.visual(emb.preprocess(x)))
        assert not torch.allclose(out.norm(dim=-1), torch.ones(2, 1))  # raw, not normalised
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        emb(torch.zeros(3, 28, 28))
    with pytest.raises(ValueError, match="multiple of heads"):
        CLIPImageEmbedder(width=100, heads=3)


def test_clip_quick_gelu_and_heads():
    emb = _tiny_clip(width=128)
    block = emb.model.visual.transformer.resblocks[0]
    assert block.attn.num_heads == 2
    assert isinstance(block.mlp.gelu, clip_mod.QuickGELU)
    assert block.mlp.c_fc.out_features == 4 * 128


# ----------------------------------------------------------------------------------------- OpenAI files
def _openai_like(emb: CLIPImageEmbedder) -> torch.nn.Module:
    """The tiny tower dressed like OpenAI's JIT CLIP: a text transformer and metadata tensors."""
    m = emb.model
    m.transformer = torch.nn.Sequential(torch.nn.Linear(8, 8))
    m.register_buffer("input_resolution", torch.tensor(28))
    m.register_buffer("context_length", torch.tensor(5))
    m.register_buffer("vocab_size", torch.tensor(10))
    return m


@pytest.fixture
def no_jit_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.jit.load must not be used")
    monkeypatch.setattr(torch.jit, "load", refuse)


@pytest.mark.filterwarnings("ignore")
def test_load_openai_torchscript_archive_without_jit(tmp_path, no_jit_load):
    src = _tiny_clip()
    m = _openai_like(src)
    m.half().float()
    with torch.no_grad():
        m.visual.proj.copy_(torch.randn_like(m.visual.proj))
    archive = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.trace(m.half(), torch.zeros(1, 3, 28, 28, dtype=torch.half), check_trace=False),
                   str(archive))
    m.float()
    sd = load_openai_clip_state_dict(archive)
    expected = {k: v for k, v in m.state_dict().items()
                if k not in ("input_resolution", "context_length", "vocab_size")}
    assert set(sd) == set(expected)
    for k in expected:
        assert sd[k].dtype == torch.float16
        assert torch.equal(sd[k].float(), expected[k]), k
    # the embedder loads it strictly (text transformer dropped) and reproduces the source
    fresh = _tiny_clip()
    with torch.no_grad():
        fresh.model.visual.proj.zero_()
    fresh.load_openai_checkpoint(archive)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        src_fresh = _tiny_clip()
        src_fresh.model.load_state_dict({k: v for k, v in expected.items() if not k.startswith("transformer.")})
        torch.testing.assert_close(fresh(x), src_fresh(x))
    with pytest.raises(ValueError, match="does not fit"):
        _tiny_clip(width=128).load_openai_checkpoint(archive)


@pytest.mark.filterwarnings("ignore")
def test_load_scripted_archive(tmp_path, no_jit_load):
    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.register_buffer("buf", torch.arange(6.0).view(2, 3)[:, 1])  # a view into a larger storage

        def forward(self, x):
            return self.lin(x) + self.buf

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = Inner()
            self.logit_scale = torch.nn.Parameter(torch.tensor(4.5))

        def forward(self, x):
            return self.visual(x) * self.logit_scale

    m = Outer()
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(m), str(path))
    sd = load_openai_clip_state_dict(path)
    assert set(sd) == set(m.state_dict())
    for k, v in m.state_dict().items():
        assert torch.equal(sd[k], v), k
    assert torch.equal(sd["visual.buf"], torch.tensor([1.0, 4.0]))


def test_restricted_unpickler_refuses_code(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    path = tmp_path / "evil.pt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"refusing to load global __builtin__\.print"):
        load_openai_clip_state_dict(path)
    assert "pwned" not in capsys.readouterr().out


def test_load_plain_state_dicts_and_errors(tmp_path):
    emb = _tiny_clip()
    sd = emb.model.state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "plain.safetensors"))
    for name in ("plain.pt", "wrapped.pth", "plain.safetensors"):
        got = load_openai_clip_state_dict(tmp_path / name)
        assert set(got) == set(sd)
        assert all(torch.equal(got[k], sd[k]) for k in sd), name
    with pytest.raises(FileNotFoundError, match="ViT-L-14.pt"):
        load_openai_clip_state_dict(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt"):
        load_openai_clip_state_dict(tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "nontensor.pt")
    with pytest.raises(ValueError, match="mapping of names to tensors"):
        load_openai_clip_state_dict(tmp_path / "nontensor.pt")
