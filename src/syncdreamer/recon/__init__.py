"""NeuS reconstruction in plain PyTorch.

* :mod:`.fields` -- SDF MLP (official), torch hash-grid SDF (fast), colour network, variance.
* :mod:`.renderer` -- NeuS volume rendering, hierarchical up-sampling, occupancy grid.
* :mod:`.neus` -- model, default (official) config, optimisation loop :func:`fit_neus`.
* :mod:`.export` -- marching cubes, .ply/.glb export, turntable GIF.
* :mod:`.io` -- views (folder or strip), cameras (rig / cameras.json / meta.pkl), pluggable masks.
* :mod:`.pipeline` -- :func:`reconstruct` behind ``reconstruct.py``.
"""
from .neus import DEFAULT_CONFIG, NeuSModel, fit_neus

__all__ = ["DEFAULT_CONFIG", "NeuSModel", "fit_neus"]
