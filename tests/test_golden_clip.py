"""The CLIP image embedder reproduces the official FrozenCLIPImageEmbedder outputs stored in golden/clip_*."""
import pytest
import torch

from golden_utils import Golden, assert_close, fixture_params
from syncdreamer.models.clip import OFFICIAL_CLIP_PREFIX, CLIPImageEmbedder


@pytest.mark.parametrize("fixture", fixture_params("clip"))
def test_clip_matches_official(fixture):
    g = Golden(fixture)
    cfg = g.config
    vision, pre = cfg["vision"], cfg["preprocessing"]
    model = CLIPImageEmbedder.from_openai_constructor(**cfg["clip_constructor"], mean=pre["mean"], std=pre["std"])
    assert model.model.visual.transformer.resblocks[0].attn.num_heads == vision["heads"]
    assert model.model.visual.positional_embedding.shape[0] == vision["tokens"]
    sd = {k[len(OFFICIAL_CLIP_PREFIX):]: v for k, v in g.weights.items() if k.startswith(OFFICIAL_CLIP_PREFIX)}
    assert len(sd) == g.manifest["weights"]["num_keys"]
    model.model.load_state_dict(sd, strict=True)
    assert sum(p.numel() for p in model.parameters()) == g.manifest["weights"]["num_numbers"]
    model.eval()

    x = g.tensors["input_image"]
    with torch.no_grad():
        got = {"preprocessed_224": model.preprocess(x), "clip_embedding": model(x)}
    outputs = g.outputs()
    assert set(outputs) <= set(got), f"outputs not checked: {set(outputs) - set(got)}"
    for name in outputs:
        assert got[name].shape == g.tensors[name].shape
        assert_close(got[name], g.tensors[name], name=name, **g.tol(name))
