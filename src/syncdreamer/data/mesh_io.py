"""Meshes in the render world frame: file axis conventions, loading and the official normalisation.

The Blender render script (``data_prep/blender_render.py``) defines the world frame of a rendered
object: Blender's own importers bring the file into Blender's z-up world (glTF and OBJ are y-up
files: the importers map file ``(X, Y, Z)`` to world ``(X, -Z, Y)``; PLY, STL and our procedural
PLY files are read as they are), then the object is normalised (largest bounding-box side = 1,
bounding-box centre at the origin). This module reproduces that frame with trimesh so that the
validation can project a source mesh with the stored cameras, and the procedural exporter can write
files that land in the intended orientation after Blender's import.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "MESH_SUFFIXES",
    "TRIMESH_SUFFIXES",
    "Y_UP_TO_Z_UP",
    "Z_UP_TO_Y_UP",
    "file_to_world",
    "world_to_file",
    "load_mesh_world",
    "normalization",
    "normalize_points",
    "load_normalized_mesh",
]

#: Mesh file suffixes the render script imports (Blender importers).
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".fbx", ".stl")
#: Suffixes trimesh can read for the silhouette check (FBX cannot be read outside Blender).
TRIMESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl")

#: Rotation applied by Blender's glTF / OBJ importers: file (X, Y, Z) -> world (X, -Z, Y).
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
#: Its inverse, used when writing z-up world geometry into a y-up file.
Z_UP_TO_Y_UP = Y_UP_TO_Z_UP.T

_FILE_ROTATION = {
    ".glb": Y_UP_TO_Z_UP,
    ".gltf": Y_UP_TO_Z_UP,
    ".obj": Y_UP_TO_Z_UP,
    ".ply": np.eye(3),
    ".stl": np.eye(3),
}


def _suffix(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _FILE_ROTATION:
        raise ValueError(
            f"{path}: unsupported mesh format {suffix!r} for trimesh; use one of {', '.join(TRIMESH_SUFFIXES)}"
        )
    return suffix


def file_to_world(path) -> np.ndarray:
    """3x3 rotation from the coordinates stored in a file of this suffix to Blender's world frame."""
    return _FILE_ROTATION[_suffix(path)].copy()


def world_to_file(path) -> np.ndarray:
    """3x3 rotation from Blender's world frame to the coordinates to store in a file of this suffix."""
    return file_to_world(path).T


def load_mesh_world(path):
    """Load a mesh file with trimesh and return one ``trimesh.Trimesh`` (or ``PointCloud``) in the world frame.

    Scenes are flattened with their node transforms; the importer's axis conversion is applied.
    Raises ``ValueError`` with a one-line reason for unreadable or empty files.
    """
    import trimesh

    path = Path(path)
    rot = file_to_world(path)
    if not path.is_file():
        raise ValueError(f"{path}: mesh file not found")
    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:  # trimesh raises many types for broken files
        raise ValueError(f"{path}: trimesh cannot read it ({type(exc).__name__}: {exc})") from exc
    if isinstance(loaded, trimesh.Scene):
        if len(loaded.geometry) == 0:
            raise ValueError(f"{path}: the file holds no geometry")
        geom = loaded.to_geometry() if hasattr(loaded, "to_geometry") else loaded.dump(concatenate=True)
    else:
        geom = loaded
    verts = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))), np.float64)
    if len(verts) == 0:
        raise ValueError(f"{path}: the file holds no vertices")
    geom = geom.copy()
    transform = np.eye(4)
    transform[:3, :3] = rot
    geom.apply_transform(transform)
    return geom


def normalization(vertices) -> tuple[float, np.ndarray]:
    """The official normalisation ``x -> scale * (x - center)``: largest bbox side becomes 1, bbox centre 0.

    Returns ``(scale, center)``. A degenerate (flat in all axes) bbox raises ``ValueError``.
    """
    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    lo, hi = v.min(0), v.max(0)
    side = float((hi - lo).max())
    if not np.isfinite(side) or side <= 0:
        raise ValueError("cannot normalise: the mesh bounding box has zero (or non-finite) size")
    return 1.0 / side, (lo + hi) / 2.0


def normalize_points(points, scale: float, center) -> np.ndarray:
    """Apply :func:`normalization`'s transform to points (N, 3)."""
    return (np.asarray(points, np.float64) - np.asarray(center, np.float64)) * float(scale)


def load_normalized_mesh(path):
    """:func:`load_mesh_world` followed by the official normalisation (object inside [-0.5, 0.5]^3).

    Returns ``(mesh, scale, center)`` where ``center`` is in the unnormalised world frame.
    """
    geom = load_mesh_world(path)
    scale, center = normalization(geom.vertices)
    geom.vertices = normalize_points(geom.vertices, scale, center)
    return geom, scale, center
