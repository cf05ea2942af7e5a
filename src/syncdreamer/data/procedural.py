"""Procedural test objects: small coloured trimesh meshes that are asymmetric enough that a wrong camera shows.

Every object is built in the project's world frame (z-up) from a few primitives, each part with its own
vertex colour, with sizes drawn from a seeded generator. No object has a mirror or rotational symmetry
about the vertical axis (an off-centre bump, arm or tail breaks it), so a swapped or mis-posed view gives
a visibly different silhouette.

:func:`export_mesh` writes a mesh so that Blender's importer brings it back in the intended orientation
(y-up files for glTF / OBJ, see :mod:`syncdreamer.data.mesh_io`); :func:`make_procedural_set` writes
``n`` such files, the smoke-test data set of the project.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .mesh_io import world_to_file

__all__ = ["KINDS", "FORMATS", "make_object", "export_mesh", "make_procedural_set"]

#: The object kinds, in the order :func:`make_procedural_set` cycles through them.
KINDS = ("box", "cone", "torus", "toy")
#: File formats :func:`export_mesh` writes.
FORMATS = ("glb", "ply", "obj")

# Distinct part colours (RGBA uint8): red, green, blue, yellow, magenta, cyan, orange.
_PALETTE = np.array(
    [[220, 40, 40, 255], [40, 180, 60, 255], [40, 80, 220, 255], [230, 200, 30, 255],
     [200, 50, 200, 255], [30, 200, 200, 255], [240, 130, 20, 255]],
    dtype=np.uint8,
)


def _translate(mesh, xyz):
    mesh.apply_translation(np.asarray(xyz, np.float64))
    return mesh


def _rot(axis, angle):
    import trimesh

    return trimesh.transformations.rotation_matrix(angle, axis)


def _colored(mesh, color_index: int):
    import trimesh

    color = _PALETTE[color_index % len(_PALETTE)]
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile(color, (len(mesh.vertices), 1)))
    return mesh


def _box_parts(rng):
    import trimesh

    a = rng.uniform(0.6, 1.0)
    b, c = a * rng.uniform(0.3, 0.45), a * rng.uniform(0.2, 0.35)
    body = trimesh.creation.box(extents=(a, b, c))
    s = a * rng.uniform(0.12, 0.2)
    bump = _translate(trimesh.creation.box(extents=(s, s, s)), (a / 2 - s / 2, b / 2 - s / 2, c / 2 + s / 2))
    peg_len = a * rng.uniform(0.15, 0.3)
    peg = trimesh.creation.cylinder(radius=a * 0.05, height=peg_len, sections=24)
    peg.apply_transform(_rot((0, 1, 0), np.pi / 2))
    _translate(peg, (-a / 2 - peg_len / 2, -b / 4, 0.0))
    return [body, bump, peg]


def _cone_parts(rng):
    import trimesh

    r, h = rng.uniform(0.14, 0.18), rng.uniform(0.8, 0.9)
    cone = trimesh.creation.cone(radius=r, height=h, sections=48)
    arm_len = rng.uniform(0.15, 0.25)
    arm = trimesh.creation.cylinder(radius=0.05, height=arm_len, sections=24)
    arm.apply_transform(_rot((1, 0, 0), np.pi / 2))
    _translate(arm, (0.0, r * 0.6 + arm_len / 2, h * 0.3))
    ball = _translate(trimesh.creation.icosphere(subdivisions=2, radius=0.07), (0.0, r * 0.6 + arm_len, h * 0.3))
    fin = trimesh.creation.box(extents=(0.2, 0.03, 0.12))  # breaks the mirror plane of cone + arm
    fin.apply_transform(_rot((0, 0, 1), np.deg2rad(-30.0)))
    _translate(fin, (r * 0.9 * np.cos(np.deg2rad(-30.0)), r * 0.9 * np.sin(np.deg2rad(-30.0)), 0.1))
    return [cone, arm, ball, fin]


def _torus_parts(rng):
    import trimesh

    major, minor = rng.uniform(0.3, 0.4), rng.uniform(0.07, 0.12)
    ring = trimesh.creation.torus(major_radius=major, minor_radius=minor, major_sections=48, minor_sections=16)
    post_h = rng.uniform(0.3, 0.5)
    post = _translate(trimesh.creation.cylinder(radius=0.05, height=post_h, sections=24), (major, 0.0, post_h / 2))
    knob = _translate(trimesh.creation.icosphere(subdivisions=2, radius=0.1), (major, 0.0, post_h))
    a = np.deg2rad(120.0)  # a small block off the post's mirror plane
    block = _translate(trimesh.creation.box(extents=(0.12, 0.12, 0.1)),
                       (major * np.cos(a), major * np.sin(a), minor + 0.05))
    return [ring, post, knob, block]


def _toy_parts(rng):
    import trimesh

    bw, bd, bh = rng.uniform(0.45, 0.6), rng.uniform(0.25, 0.35), rng.uniform(0.25, 0.35)
    leg_h = rng.uniform(0.12, 0.2)
    body = _translate(trimesh.creation.box(extents=(bw, bd, bh)), (0.0, 0.0, leg_h + bh / 2))
    head_r = rng.uniform(0.12, 0.16)
    head_c = (bw / 2 + head_r * 0.6, 0.0, leg_h + bh + head_r * 0.5)
    head = _translate(trimesh.creation.icosphere(subdivisions=2, radius=head_r), head_c)
    hat = _translate(trimesh.creation.cone(radius=head_r * 0.8, height=head_r * 1.5, sections=32),
                     (head_c[0], head_c[1], head_c[2] + head_r * 0.7))
    legs = []
    for i, (x, y) in enumerate([(bw / 3, bd / 3), (-bw / 3, -bd / 3)]):
        h = leg_h * (1.0 if i == 0 else 1.2)
        legs.append(_translate(trimesh.creation.cylinder(radius=0.05, height=h, sections=16), (x, y, h / 2)))
    tail_len = rng.uniform(0.15, 0.22)
    tail = trimesh.creation.cylinder(radius=0.035, height=tail_len, sections=16)
    tail.apply_transform(_rot((0, 1, 0), np.pi / 3))
    _translate(tail, (-bw / 2 - tail_len * 0.35, bd / 4, leg_h + bh * 0.8))
    return [body, head, hat, *legs, tail]


_BUILDERS = {"box": _box_parts, "cone": _cone_parts, "torus": _torus_parts, "toy": _toy_parts}


def make_object(kind: str, seed: int = 0):
    """One procedural object as a single ``trimesh.Trimesh`` with per-part vertex colours (world z-up).

    ``kind`` is one of :data:`KINDS`; ``seed`` draws the part sizes. The object is not normalised
    (the renderer and the validation normalise it the official way).
    """
    import trimesh

    if kind not in _BUILDERS:
        raise ValueError(f"unknown procedural kind {kind!r}; choose one of {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    parts = _BUILDERS[kind](rng)
    offset = int(rng.integers(len(_PALETTE)))
    parts = [_colored(p, offset + i) for i, p in enumerate(parts)]
    return trimesh.util.concatenate(parts)


def export_mesh(mesh, path) -> Path:
    """Write ``mesh`` (world z-up) to ``path`` (.glb, .ply or .obj) in the axes Blender's importer expects."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"{path}: cannot export {suffix!r}; use one of {', '.join(FORMATS)}")
    out = mesh.copy()
    transform = np.eye(4)
    transform[:3, :3] = world_to_file(path)
    out.apply_transform(transform)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.export(str(path))
    return path


def make_procedural_set(out_dir, n: int, seed: int = 0, kinds=KINDS, formats=("glb",)) -> list[Path]:
    """Write ``n`` procedural objects to ``out_dir`` and return their paths.

    Object ``i`` has kind ``kinds[i % len(kinds)]``, format ``formats[i % len(formats)]``, seed
    ``seed * 100003 + i`` and file name ``<kind>_<i:03d>.<format>`` (the stem is its uid). Existing
    files are overwritten (the content is a pure function of the arguments).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not kinds or not formats:
        raise ValueError("kinds and formats must be non-empty")
    out_dir = Path(out_dir)
    paths = []
    for i in range(n):
        kind, fmt = kinds[i % len(kinds)], formats[i % len(formats)]
        mesh = make_object(kind, seed=seed * 100003 + i)
        paths.append(export_mesh(mesh, out_dir / f"{kind}_{i:03d}.{fmt}"))
    return paths
