"""NeuS reconstruction in plain PyTorch.

* :mod:`.presets` -- the recon presets (``conf/recon``, the one source), ``auto`` resolution by device.
* :mod:`.fields` -- SDF MLP (official), torch hash-grid SDF (fast), colour network, variance.
* :mod:`.renderer` -- NeuS volume rendering, hierarchical up-sampling, occupancy grid.
* :mod:`.neus` -- model and optimisation loop :func:`fit_neus` (rays chunked for bounded memory).
* :mod:`.export` -- marching cubes, .ply/.glb export, turntable GIF.
* :mod:`.io` -- views (folder or strip), cameras (rig / cameras.json / meta.pkl), pluggable masks.
* :mod:`.pipeline` -- :func:`reconstruct` behind ``reconstruct.py``.
"""
from .neus import NeuSModel, fit_neus
from .presets import load_preset, resolve_preset

__all__ = ["NeuSModel", "fit_neus", "load_preset", "resolve_preset"]
