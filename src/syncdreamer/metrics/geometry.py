"""Geometry metrics of the benchmark protocol: Chamfer distance, Volume IoU and F-score.

Protocol (see ``experiments/protocol.md``; spec section 5.2):

* Both meshes live in the canonical frame of the fixed rig (objects in [-0.5, 0.5]^3, z up). The GT mesh
  is normalised (largest bbox side 1, bbox centre at the origin) and rotated about z by the per-object
  angle table (:mod:`syncdreamer.metrics.protocol`); the predicted mesh is used as-is (no ICP).
* Chamfer: points from depth ray-cast at the 16 fixed views and back-projected, voxel down-sampled at
  0.01 (mean of the points per voxel), then ``0.5 * (mean_p min_q |p - q| + mean_q min_p |q - p|)``
  (Euclidean, not squared).
* Volume IoU, two protocols (:func:`volume_iou`, ``protocol=``):

  - ``official`` (the paper's numbers, official ``eval_mesh.py``): ``mesh2sdf.compute(vertices, faces, 64,
    fix=False) < 0`` for both meshes, ``|A & B| / |A | B|``. Verified grid of mesh2sdf 1.1 (see
    ``experiments/protocol.md``): array index ``[i, j, k]`` is the point ``(x, y, z) = -1 + 2 (i, j, k) / 64``
    (lattice points, not cell centres: the grid spans [-1, 1 - 2/64]^3, step 0.03125), distances in world
    units; vertices must lie in [-1, 1]^3. With ``fix=False`` the inside of a non-watertight mesh is
    whatever mesh2sdf's sign gives (as in the official evaluation).
  - ``exact``: occupancy of the centres of a 64^3 grid over ``[-b, b]^3`` (``b = 0.6`` by default). Occupancy
    of a mesh whose connected components are all closed is exact: the union of the ray-parity containment of
    each component (overlapping closed parts, as in meshes assembled from primitives, are handled).
    A non-watertight mesh goes through a **robust fallback**: the surface is rasterised into the grid as a
    shell, the outside is flood-filled from the grid border, everything not reached is inside, and shell
    cells take the side given by the normal of the face of the nearest dense surface sample. If the holes
    are larger than a cell the flood fill leaks and the mesh has no interior: that raises
    :class:`GeometryError` with a clear message.
"""
from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["GeometryError", "IOU_PROTOCOLS", "voxel_downsample", "chamfer_distance", "fscore", "grid_centers",
           "occupancy_grid", "mesh2sdf_grid_points", "mesh2sdf_occupancy", "volume_iou", "normalize_mesh", "rotate_z", "load_mesh"]


class GeometryError(ValueError):
    """A mesh or point set that a geometry metric cannot be computed on (message is one line)."""


#: Volume IoU protocols: ``official`` = mesh2sdf 64^3 over [-1, 1]^3 (paper-comparable), ``exact`` = ours.
IOU_PROTOCOLS = ("official", "exact")


def load_mesh(path) -> trimesh.Trimesh:
    """Load a mesh file into the render world frame (z up) as one Trimesh.

    Uses :func:`syncdreamer.data.mesh_io.load_mesh_world` (glTF/OBJ are y-up files and get Blender's
    importer rotation; PLY/STL are read as stored). Raises :class:`GeometryError` when the file cannot be
    read or holds no triangles."""
    from syncdreamer.data.mesh_io import load_mesh_world

    try:
        m = load_mesh_world(path)
    except Exception as e:
        raise GeometryError(f"cannot read mesh {path}: {e}") from None
    if not isinstance(m, trimesh.Trimesh) or len(m.faces) == 0:
        raise GeometryError(f"mesh {path} has no triangles")
    return m


def normalize_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Copy of ``mesh`` scaled so the largest bbox side is 1 and translated so the bbox centre is 0."""
    m = mesh.copy()
    lo, hi = m.bounds
    size = float((hi - lo).max())
    if not np.isfinite(size) or size <= 0:
        raise GeometryError("normalize_mesh: degenerate mesh bounding box")
    m.apply_translation(-(lo + hi) / 2)
    m.apply_scale(1.0 / size)
    return m


def rotate_z(mesh: trimesh.Trimesh, angle_deg: float) -> trimesh.Trimesh:
    """Copy of ``mesh`` rotated by ``angle_deg`` about the world z axis (right-handed)."""
    m = mesh.copy()
    if angle_deg:
        m.apply_transform(trimesh.transformations.rotation_matrix(np.deg2rad(angle_deg), [0, 0, 1]))
    return m


def voxel_downsample(points: np.ndarray, voxel: float) -> np.ndarray:
    """Mean of the points in each occupied voxel of size ``voxel`` (like open3d's voxel_down_sample).

    points: (P, 3) -> (Q, 3), Q <= P; ``voxel <= 0`` returns the points unchanged."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    if voxel <= 0 or len(points) == 0:
        return points
    keys = np.floor(points / voxel).astype(np.int64)
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    cnt = np.bincount(inv).astype(np.float64)
    out = np.stack([np.bincount(inv, weights=points[:, k]) for k in range(3)], -1)
    return out / cnt[:, None]


def _check_points(p, name):
    p = np.asarray(p, np.float64).reshape(-1, 3)
    if len(p) == 0:
        raise GeometryError(f"{name} point set is empty (no surface seen from the views)")
    if not np.isfinite(p).all():
        raise GeometryError(f"{name} point set has non-finite values")
    return p


def chamfer_distance(pred: np.ndarray, gt: np.ndarray, voxel: float = 0.01) -> dict:
    """Symmetric Chamfer distance between point sets (P, 3) and (Q, 3), after voxel down-sampling.

    Returns ``{"chamfer": 0.5 * (pred_to_gt + gt_to_pred), "pred_to_gt": .., "gt_to_pred": ..}``
    (mean Euclidean nearest-neighbour distances)."""
    p = voxel_downsample(_check_points(pred, "predicted"), voxel)
    g = voxel_downsample(_check_points(gt, "ground-truth"), voxel)
    d_pg = cKDTree(g).query(p)[0]
    d_gp = cKDTree(p).query(g)[0]
    a, b = float(d_pg.mean()), float(d_gp.mean())
    return {"chamfer": 0.5 * (a + b), "pred_to_gt": a, "gt_to_pred": b}


def fscore(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.02, voxel: float = 0.01) -> dict:
    """F-score at ``threshold``: harmonic mean of precision (pred points within threshold of gt) and
    recall (gt points within threshold of pred), on voxel down-sampled points (P,3), (Q,3)."""
    p = voxel_downsample(_check_points(pred, "predicted"), voxel)
    g = voxel_downsample(_check_points(gt, "ground-truth"), voxel)
    prec = float((cKDTree(g).query(p)[0] < threshold).mean())
    rec = float((cKDTree(p).query(g)[0] < threshold).mean())
    f = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return {"fscore": f, "precision": prec, "recall": rec}


def grid_centers(resolution: int = 64, bound: float = 0.6) -> np.ndarray:
    """Centres (R, R, R, 3) of a cubic grid of R^3 cells over ``[-bound, bound]^3`` (index order x, y, z)."""
    c = (np.arange(resolution) + 0.5) / resolution * 2 * bound - bound
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)


def _contains(mesh: trimesh.Trimesh, pts: np.ndarray) -> np.ndarray:
    from syncdreamer.raycast import has_embree, ray_intersector
    if has_embree():
        return ray_intersector(mesh).contains_points(pts)
    return mesh.contains(pts)


def _floodfill_occupancy(mesh: trimesh.Trimesh, resolution: int, bound: float) -> np.ndarray:
    cell = 2 * bound / resolution
    # rasterise the surface: sample densely enough that every cell the surface crosses gets a sample
    area = float(mesh.area)
    n = int(min(5e6, max(1e4, 8 * area / (cell * 0.5) ** 2)))
    pts, fid = trimesh.sample.sample_surface(mesh, n, seed=0)
    idx = np.floor((pts + bound) / cell).astype(np.int64)
    ok = ((idx >= 0) & (idx < resolution)).all(1)
    shell = np.zeros((resolution,) * 3, bool)
    shell[tuple(idx[ok].T)] = True
    # flood fill the outside from the border through non-shell cells
    pad = np.pad(~shell, 1, constant_values=True)
    lab, _ = ndimage.label(pad)
    outside = (lab == lab[0, 0, 0])[1:-1, 1:-1, 1:-1]
    occ = ~outside & ~shell
    if not occ.any() and not shell.all():
        raise GeometryError("mesh is not watertight and its holes are larger than an IoU grid cell: "
                            "interior undefined")
    # shell cells: inside if the centre lies behind the face of the nearest dense surface sample
    centers = grid_centers(resolution, bound)[shell]
    if len(centers):
        nn = cKDTree(pts).query(centers)[1]
        side = np.einsum("ij,ij->i", centers - pts[nn], mesh.face_normals[fid[nn]])
        occ[shell] = side < 0
    return occ


def occupancy_grid(mesh: trimesh.Trimesh, resolution: int = 64, bound: float = 0.6,
                   allow_fallback: bool = True) -> tuple[np.ndarray, str]:
    """Occupancy (R, R, R) bool of the grid cell centres of :func:`grid_centers`, and the method used
    (``"contains"`` for watertight meshes, ``"floodfill"`` for the non-watertight fallback).

    ``allow_fallback=False`` raises :class:`GeometryError` for non-watertight meshes instead."""
    if len(mesh.faces) == 0:
        raise GeometryError("mesh is empty (no triangles): no volume for IoU")
    parts = mesh.split(only_watertight=False) if mesh.body_count > 1 else [mesh]
    if all(p.is_watertight for p in parts):
        # union over closed components: parity tests are wrong where overlapping parts intersect
        pts = grid_centers(resolution, bound).reshape(-1, 3)
        occ = np.zeros(len(pts), bool)
        for p in parts:
            occ |= _contains(p, pts)
        return occ.reshape((resolution,) * 3), "contains"
    if not allow_fallback:
        raise GeometryError("mesh is not watertight: Volume IoU needs a closed mesh (fallback disabled)")
    return _floodfill_occupancy(mesh, resolution, bound), "floodfill"


def mesh2sdf_grid_points(resolution: int = 64) -> np.ndarray:
    """The points (R, R, R, 3) where ``mesh2sdf.compute(..., R)`` samples the SDF: ``-1 + 2 i / R`` per axis,
    array index order (x, y, z) (verified against mesh2sdf 1.1, ``experiments/protocol.md``)."""
    c = -1.0 + 2.0 * np.arange(resolution) / resolution
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)


def mesh2sdf_occupancy(mesh: trimesh.Trimesh, resolution: int = 64) -> np.ndarray:
    """Occupancy (R, R, R) bool as the official evaluation: ``mesh2sdf.compute(v, f, R, fix=False) < 0``.

    Raises :class:`GeometryError` for an empty mesh or vertices outside mesh2sdf's [-1, 1]^3."""
    import mesh2sdf

    if len(mesh.faces) == 0:
        raise GeometryError("mesh is empty (no triangles): no volume for IoU")
    v = np.asarray(mesh.vertices, np.float64)
    if not np.isfinite(v).all() or np.abs(v).max() > 1.0:
        raise GeometryError(f"mesh vertices reach {np.abs(v).max():.3f}: the official IoU grid (mesh2sdf) "
                            "covers [-1, 1]^3 only; normalise the mesh or use protocol=exact")
    sdf = mesh2sdf.compute(v, np.asarray(mesh.faces, np.int64), int(resolution), fix=False)
    return np.asarray(sdf) < 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    if union == 0:
        raise GeometryError("both meshes have empty interiors on the IoU grid")
    return float(np.logical_and(a, b).sum() / union)


def volume_iou(pred: trimesh.Trimesh, gt: trimesh.Trimesh, protocol: str = "official", *, resolution: int = 64,
               bound: float = 0.6, allow_fallback: bool = True) -> dict:
    """Volume IoU of two meshes in the canonical frame (see the module docstring for both protocols).

    ``protocol="official"``: mesh2sdf occupancy on its 64^3 grid over [-1, 1]^3 (``bound`` and
    ``allow_fallback`` unused); ``"exact"``: our occupancy of the cell centres of a ``resolution^3`` grid over
    ``[-bound, bound]^3``. Returns ``{"iou": .., "iou_method": .., "protocol": ..}``; raises
    :class:`GeometryError` when either mesh has no interior (or, official, lies outside [-1, 1]^3)."""
    if protocol == "official":
        a, b = mesh2sdf_occupancy(pred, resolution), mesh2sdf_occupancy(gt, resolution)
        return {"iou": _iou(a, b), "iou_method": "mesh2sdf", "protocol": protocol}
    if protocol != "exact":
        raise ValueError(f"unknown IoU protocol {protocol!r}: use one of {list(IOU_PROTOCOLS)}")
    a, ma = occupancy_grid(pred, resolution, bound, allow_fallback)
    b, mb = occupancy_grid(gt, resolution, bound, allow_fallback)
    return {"iou": _iou(a, b), "iou_method": f"{ma}/{mb}", "protocol": protocol}
