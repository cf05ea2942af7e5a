"""Neural fields of NeuS: SDF networks (MLP or multiresolution hash grid), colour network, variance.

* :class:`SDFNetwork` -- the official NeuS SDF MLP: positional encoding, geometric (sphere) init,
  weight norm, Softplus(beta=100), skip connection; outputs ``[sdf, feature]``.
* :class:`HashGridSDF` -- a multiresolution hash grid written in plain torch (dense tables on coarse
  levels, spatial hashing on fine ones) + a tiny MLP, added to an analytic sphere SDF so that it starts
  as a sphere like the geometric init. Much cheaper per point than the 8x256 MLP (CPU friendly).
* :class:`ColorNetwork` -- NeuS's "idr" colour head ``(x, normal, PE(view dir), feature) -> rgb``.
* :class:`SingleVariance` -- the single learned ``inv_s = exp(10 * variance)``.

Both SDF fields expose ``forward(x) -> (P, 1 + F)``, ``sdf(x) -> (P,)`` and
``sdf_and_gradient(x, create_graph) -> sdf (P,), feature (P, F), grad (P, 3)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FrequencyEncoding", "SDFNetwork", "HashGridSDF", "ColorNetwork", "SingleVariance", "build_sdf"]


class FrequencyEncoding(nn.Module):
    """``x -> [x, sin(2^k x), cos(2^k x) for k < n_freqs]`` (NeuS style, no pi): (P, D) -> (P, D(1+2n))."""

    def __init__(self, in_dim: int, n_freqs: int):
        super().__init__()
        self.in_dim, self.n_freqs = in_dim, n_freqs
        self.register_buffer("freqs", 2.0 ** torch.arange(n_freqs, dtype=torch.float32), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.in_dim * (1 + 2 * self.n_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_freqs == 0:
            return x
        xf = (x[..., None, :] * self.freqs[:, None]).flatten(-2)
        return torch.cat([x, torch.sin(xf), torch.cos(xf)], -1)


class _SDFBase(nn.Module):
    feature_dim: int

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """SDF values (P,) at points (P, 3)."""
        return self(x)[:, 0]

    def sdf_and_gradient(self, x: torch.Tensor, create_graph: bool = True):
        """sdf (P,), feature (P, F), spatial gradient of the sdf (P, 3)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = self(x)
            sdf = out[:, 0]
            grad = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=create_graph)[0]
        if not create_graph:
            sdf, out, grad = sdf.detach(), out.detach(), grad.detach()
        return sdf, out[:, 1:], grad


class SDFNetwork(_SDFBase):
    """The official NeuS SDF MLP.

    Args:
        hidden_dim, n_layers: hidden width and number of hidden layers (official 256 x 8).
        skip_layers: layers whose input is ``cat(h, PE(x)) / sqrt(2)`` (official (4,)).
        n_freqs: positional-encoding frequencies of x (official 6).
        feature_dim: geometry feature size passed to the colour network (official 256).
        init_radius: radius of the sphere of the geometric init (official 0.5).
        weight_norm: weight-normalised linear layers (official True).
        softplus_beta: Softplus sharpness (official 100).
    Shapes: x (P, 3) -> (P, 1 + feature_dim).
    """

    def __init__(self, hidden_dim: int = 256, n_layers: int = 8, skip_layers=(4,), n_freqs: int = 6,
                 feature_dim: int = 256, init_radius: float = 0.5, geometric_init: bool = True,
                 weight_norm: bool = True, softplus_beta: float = 100.0):
        super().__init__()
        self.encoding = FrequencyEncoding(3, n_freqs)
        self.feature_dim = feature_dim
        self.skip_layers = set(int(s) for s in skip_layers)
        if any(s <= 0 or s >= n_layers for s in self.skip_layers):
            raise ValueError(f"skip_layers {sorted(self.skip_layers)} must lie in 1..{n_layers - 1}")
        pe = self.encoding.out_dim
        dims = [pe] + [hidden_dim] * n_layers + [1 + feature_dim]
        layers = []
        for i in range(len(dims) - 1):
            out_dim = dims[i + 1] - pe if (i + 1) in self.skip_layers else dims[i + 1]
            lin = nn.Linear(dims[i], out_dim)
            if geometric_init:
                self._geometric_init(lin, i, len(dims) - 2, pe, n_freqs, init_radius, i in self.skip_layers)
            layers.append(nn.utils.parametrizations.weight_norm(lin) if weight_norm else lin)
        self.layers = nn.ModuleList(layers)
        self.act = nn.Softplus(beta=softplus_beta)

    @staticmethod
    def _geometric_init(lin: nn.Linear, i: int, last: int, pe: int, n_freqs: int, radius: float, skip: bool):
        """SAL geometric init: the network starts as ``|x| - radius``."""
        out_dim, in_dim = lin.weight.shape
        with torch.no_grad():
            if i == last:
                nn.init.normal_(lin.weight, mean=math.sqrt(math.pi) / math.sqrt(in_dim), std=1e-4)
                nn.init.constant_(lin.bias, -radius)
                return
            nn.init.constant_(lin.bias, 0.0)
            nn.init.normal_(lin.weight, 0.0, math.sqrt(2) / math.sqrt(out_dim))
            if n_freqs > 0 and i == 0:
                lin.weight[:, 3:] = 0.0  # start from x alone; the frequencies are learnt in
            elif n_freqs > 0 and skip:
                lin.weight[:, -(pe - 3):] = 0.0  # the re-injected input: only x itself at init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = self.encoding(x)
        h = inp
        for i, layer in enumerate(self.layers):
            if i in self.skip_layers:
                h = torch.cat([h, inp], -1) / math.sqrt(2)
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class HashGridEncoding(nn.Module):
    """Multiresolution hash-grid encoding (Instant-NGP) in plain torch, over the cube ``[-bound, bound]^3``.

    Level l has resolution ``floor(base * growth^l)`` with ``growth`` so the last level is ``max_res``;
    a level whose ``(res+1)^3`` corners fit in ``2^log2_table`` entries is a dense table, otherwise the
    corners are hashed. Trilinear interpolation of ``n_features`` per level.
    Shapes: x (P, 3) -> (P, n_levels * n_features).
    """

    _PRIMES = (1, 2654435761, 805459861)

    def __init__(self, n_levels: int = 12, n_features: int = 2, log2_table: int = 17, base_res: int = 16,
                 max_res: int = 256, bound: float = 0.6, init_scale: float = 1e-4):
        super().__init__()
        if n_levels < 1 or base_res < 1 or max_res < base_res:
            raise ValueError(f"bad hash grid: n_levels={n_levels}, base_res={base_res}, max_res={max_res}")
        self.n_levels, self.n_features, self.bound = n_levels, n_features, bound
        growth = math.exp((math.log(max_res) - math.log(base_res)) / max(n_levels - 1, 1))
        self.resolutions = [int(math.floor(base_res * growth ** l)) for l in range(n_levels)]
        table = 2 ** log2_table
        self.sizes = [min(table, (r + 1) ** 3) for r in self.resolutions]
        self.dense = [(r + 1) ** 3 <= table for r in self.resolutions]
        self.offsets = [0]
        for s in self.sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.table = nn.Parameter(torch.empty(self.offsets[-1], n_features).uniform_(-init_scale, init_scale))
        corners = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=torch.long)
        self.register_buffer("corners", corners, persistent=False)

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = ((x + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)  # (P, 3) in [0, 1]
        feats = []
        for l, res in enumerate(self.resolutions):
            pos = u * res
            base = pos.detach().floor().clamp(max=res - 1).long()
            frac = pos - base  # differentiable in x
            if self.dense[l]:
                r1 = res + 1
                flat = (base[:, 0] * r1 + base[:, 1]) * r1 + base[:, 2]  # (P,)
                k = self.corners
                idx = flat[:, None] + ((k[:, 0] * r1 + k[:, 1]) * r1 + k[:, 2])[None]  # (P, 8)
            else:
                c = base[:, None, :] + self.corners[None]  # (P, 8, 3)
                idx = (c[..., 0] * self._PRIMES[0]) ^ (c[..., 1] * self._PRIMES[1]) ^ (c[..., 2] * self._PRIMES[2])
                idx = idx % self.sizes[l]
            vals = self.table[idx + self.offsets[l]]  # (P, 8, F)
            wa = torch.stack([1 - frac, frac], 1)  # (P, 2, 3): weight of the low / high corner per axis
            k = self.corners
            w = wa[:, k[:, 0], 0] * wa[:, k[:, 1], 1] * wa[:, k[:, 2], 2]  # (P, 8); no prod (slow 2nd derivative)
            feats.append(torch.bmm(w[:, None, :], vals)[:, 0])  # (P, F)
        return torch.cat(feats, -1)


class HashGridSDF(_SDFBase):
    """SDF = ``|x| - init_radius`` + tiny MLP(x, hash-grid features) (starts as a sphere).

    Shapes: x (P, 3) -> (P, 1 + feature_dim)."""

    def __init__(self, n_levels: int = 12, n_features: int = 2, log2_table: int = 17, base_res: int = 16,
                 max_res: int = 256, bound: float = 0.6, hidden_dim: int = 64, n_hidden: int = 1,
                 feature_dim: int = 15, init_radius: float = 0.5, softplus_beta: float = 100.0):
        super().__init__()
        self.encoding = HashGridEncoding(n_levels, n_features, log2_table, base_res, max_res, bound)
        self.feature_dim, self.init_radius = feature_dim, init_radius
        dims = [3 + self.encoding.out_dim] + [hidden_dim] * n_hidden + [1 + feature_dim]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        with torch.no_grad():
            self.mlp[-1].weight[0].mul_(1e-2)
            self.mlp[-1].bias[0] = 0.0
        self.act = nn.Softplus(beta=softplus_beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, self.encoding(x)], -1)
        for i, lin in enumerate(self.mlp):
            h = lin(h)
            if i < len(self.mlp) - 1:
                h = self.act(h)
        sphere = x.norm(dim=-1, keepdim=True) - self.init_radius
        return torch.cat([h[:, :1] + sphere, h[:, 1:]], -1)


class ColorNetwork(nn.Module):
    """NeuS "idr" colour head: ``cat(x, normal, PE(view_dir), feature)`` -> MLP -> sigmoid rgb.

    Shapes: x, normal, view_dir (P, 3), feature (P, F) -> rgb (P, 3) in [0, 1]."""

    def __init__(self, feature_dim: int = 256, hidden_dim: int = 256, n_layers: int = 4, n_freqs_dir: int = 4,
                 weight_norm: bool = True):
        super().__init__()
        self.dir_encoding = FrequencyEncoding(3, n_freqs_dir)
        dims = [6 + self.dir_encoding.out_dim + feature_dim] + [hidden_dim] * n_layers + [3]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            lin = nn.Linear(a, b)
            layers.append(nn.utils.parametrizations.weight_norm(lin) if weight_norm else lin)
        self.layers = nn.ModuleList(layers)

    def forward(self, x, normal, view_dir, feature):
        h = torch.cat([x, normal, self.dir_encoding(view_dir), feature], -1)
        for i, lin in enumerate(self.layers):
            h = lin(h)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return torch.sigmoid(h)


class SingleVariance(nn.Module):
    """One learned scalar; ``inv_s = exp(10 * variance)`` is the sharpness of NeuS's logistic density."""

    def __init__(self, init: float = 0.3):
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(float(init)))

    def inv_s(self) -> torch.Tensor:
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)


def build_sdf(kind: str, **kwargs) -> _SDFBase:
    """SDF field by name: ``"mlp"`` -> :class:`SDFNetwork`, ``"hashgrid"`` -> :class:`HashGridSDF`."""
    if kind == "mlp":
        return SDFNetwork(**kwargs)
    if kind == "hashgrid":
        return HashGridSDF(**kwargs)
    raise ValueError(f"unknown sdf field {kind!r}: use 'mlp' or 'hashgrid'")
