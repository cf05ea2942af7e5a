"""CPU ray casting of triangle meshes: RGBA, depth and back-projected points at a camera rig.

A bottom-level module (it imports only :mod:`syncdreamer.cameras`), shared by the Chamfer protocol of
:mod:`syncdreamer.metrics` (depth at the 16 fixed views, back-projected to points) and the turntables of
:mod:`syncdreamer.recon.export`, and a Blender-free renderer for tests. Ray casting goes through ``trimesh``'s intersector,
which uses Embree (the ``embreex`` package) when it is installed and trimesh's pure-Python BVH
otherwise (correct, but ~100x slower: 16 views at 256 px take minutes instead of about a second).

Conventions: poses are world-to-camera OpenCV 3x4, ``K`` in pixels (see :mod:`syncdreamer.cameras`);
depth is the camera-z coordinate (not the distance along the ray), 0 where the ray misses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from syncdreamer import cameras

__all__ = ["RenderResult", "has_embree", "ray_intersector", "raycast_mesh", "render_mesh",
           "depth_to_points", "mesh_points_from_rig"]


def has_embree() -> bool:
    """True when trimesh can use Embree (``embreex``) for ray casting."""
    try:
        from trimesh.ray import ray_pyembree  # noqa: F401
        import embreex  # noqa: F401
        return True
    except Exception:
        return False


def ray_intersector(mesh: trimesh.Trimesh):
    """The fastest available trimesh ray intersector for ``mesh`` (Embree if present)."""
    if has_embree():
        from trimesh.ray.ray_pyembree import RayMeshIntersector
        return RayMeshIntersector(mesh)
    from trimesh.ray.ray_triangle import RayMeshIntersector
    return RayMeshIntersector(mesh)


@dataclass
class RenderResult:
    """Outputs of :func:`render_mesh` for N views of size H x W.

    ``rgba``: (N, H, W, 4) float32 in [0, 1] (straight alpha, colour defined where alpha > 0);
    ``depth``: (N, H, W) float32 camera-z depth, 0 where the ray misses;
    ``normal``: (N, H, W, 3) float32 world-space unit normals facing the camera, 0 where the ray misses.
    """

    rgba: np.ndarray
    depth: np.ndarray
    normal: np.ndarray


def raycast_mesh(mesh: trimesh.Trimesh, origins: np.ndarray, dirs: np.ndarray, intersector=None):
    """First hit of each ray. origins, dirs: (R, 3). Returns ``t`` (R,) distance along the (unit) ray
    (``inf`` for misses), ``face`` (R,) hit triangle index (-1 for misses), ``points`` (R, 3)."""
    if len(mesh.faces) == 0:
        raise ValueError("raycast_mesh: the mesh has no faces")
    inter = intersector if intersector is not None else ray_intersector(mesh)
    locs, ray_idx, tri_idx = inter.intersects_location(origins, dirs, multiple_hits=False)
    n = len(origins)
    t = np.full(n, np.inf)
    face = np.full(n, -1, dtype=np.int64)
    points = np.zeros((n, 3))
    if len(ray_idx):
        tt = np.einsum("ij,ij->i", locs - origins[ray_idx], dirs[ray_idx])
        # multiple_hits=False may still return duplicates with some backends: keep the nearest
        order = np.argsort(-tt)
        ri, ti, tt, lo = ray_idx[order], tri_idx[order], tt[order], locs[order]
        t[ri], face[ri], points[ri] = tt, ti, lo
    return t, face, points


def _surface_colors(mesh: trimesh.Trimesh, face: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Base colour (R, 3) in [0, 1] at hit points: interpolated vertex colours, face colours, or grey."""
    visual = mesh.visual
    kind = getattr(visual, "kind", None)
    if kind == "vertex":
        vc = np.asarray(visual.vertex_colors, np.float64)[:, :3] / 255.0
        tri = mesh.triangles[face]
        bary = trimesh.triangles.points_to_barycentric(tri, points)
        return np.einsum("rk,rkc->rc", np.clip(bary, 0, 1), vc[mesh.faces[face]])
    if kind == "face":
        return np.asarray(visual.face_colors, np.float64)[face, :3] / 255.0
    if kind == "texture":
        try:
            vis = visual.to_color()
            vc = np.asarray(vis.vertex_colors, np.float64)[:, :3] / 255.0
            tri = mesh.triangles[face]
            bary = trimesh.triangles.points_to_barycentric(tri, points)
            return np.einsum("rk,rkc->rc", np.clip(bary, 0, 1), vc[mesh.faces[face]])
        except Exception:
            pass
    return np.full((len(face), 3), 0.7)


def _lambert(mesh, pts, normals, light, inter, shadows: bool) -> np.ndarray:
    """max(0, n.l) (P,) at surface points (P, 3); 0 where a ray towards the light meets the mesh (``shadows``)."""
    lam = np.clip(normals @ light, 0, None)
    lit = lam > 0
    if shadows and lit.any():
        p0 = pts[lit] + 1e-4 * normals[lit]
        _, face, _ = raycast_mesh(mesh, p0, np.broadcast_to(light, p0.shape).copy(), inter)
        lam[np.flatnonzero(lit)[face >= 0]] = 0.0
    return lam


def render_mesh(
    mesh: trimesh.Trimesh,
    poses,
    Ks,
    height: int,
    width: int,
    light_dir=(0.3, 0.4, 1.0),
    ambient: float = 0.35,
    supersample: int = 1,
    shade: bool = True,
    shadows: bool = False,
) -> RenderResult:
    """Ray-cast ``mesh`` at N cameras.

    Args:
        mesh: triangle mesh in world coordinates.
        poses: (N, 3, 4) world-to-camera OpenCV; Ks: (N, 3, 3) pixel intrinsics for ``height x width``.
        light_dir: world-space direction *towards* a directional light (view independent shading, so a
            NeuS colour field can represent it); ``shade=False`` gives unlit base colour.
        ambient: ambient term; colour = base * (ambient + (1 - ambient) * max(0, n.l)).
        supersample: s > 1 casts s x s rays per pixel and averages RGBA (anti-aliased alpha); depth and
            normal come from the centre-most sub-ray.
        shadows: cast shadows: a hit point whose ray towards the light meets the mesh gets the ambient term only.
    Returns:
        :class:`RenderResult`.
    """
    poses = np.asarray(poses, np.float64).reshape(-1, 3, 4)
    Ks = np.asarray(Ks, np.float64).reshape(-1, 3, 3)
    if len(poses) != len(Ks):
        raise ValueError(f"render_mesh: {len(poses)} poses but {len(Ks)} intrinsics")
    if supersample < 1:
        raise ValueError(f"render_mesh: supersample must be >= 1, got {supersample}")
    inter = ray_intersector(mesh)
    light = np.asarray(light_dir, np.float64)
    light = light / np.linalg.norm(light)
    s = int(supersample)
    n = len(poses)
    rgba = np.zeros((n, height, width, 4), np.float32)
    depth = np.zeros((n, height, width), np.float32)
    normal = np.zeros((n, height, width, 3), np.float32)
    for i in range(n):
        K = cameras.scale_intrinsics(Ks[i], s)
        # K scaled by s: fine pixel centre j + 0.5 sits at (j + 0.5) / s in the original image
        o, d = cameras.pixel_rays(torch.from_numpy(poses[i]), torch.from_numpy(K), height * s, width * s)
        o, d = o.numpy(), d.numpy()
        t, face, pts = raycast_mesh(mesh, o, d, inter)
        hit = face >= 0
        col = np.zeros((len(o), 3))
        nrm = np.zeros((len(o), 3))
        if hit.any():
            fn = mesh.face_normals[face[hit]]
            flip = np.einsum("ij,ij->i", fn, d[hit]) > 0
            fn[flip] *= -1
            nrm[hit] = fn
            base = _surface_colors(mesh, face[hit], pts[hit])
            if shade:
                lam = _lambert(mesh, pts[hit], fn, light, inter, shadows)
                base = base * (ambient + (1 - ambient) * lam)[:, None]
            col[hit] = base
        z = np.where(hit, t * (d @ poses[i][2, :3]), 0.0)
        a = hit.astype(np.float64)
        img = np.concatenate([col * a[:, None], a[:, None]], -1).reshape(height, s, width, s, 4).mean((1, 3))
        alpha = img[..., 3:]
        img[..., :3] = np.where(alpha > 0, img[..., :3] / np.maximum(alpha, 1e-12), 0)
        rgba[i] = img
        c = s // 2
        depth[i] = z.reshape(height, s, width, s)[:, c, :, c]
        normal[i] = nrm.reshape(height, s, width, s, 3)[:, c, :, c]
    return RenderResult(rgba=rgba, depth=depth, normal=normal)


def depth_to_points(depth, poses, Ks, valid_range: tuple[float, float] | None = None) -> np.ndarray:
    """Back-project depth maps to world points.

    Args:
        depth: (N, H, W) camera-z depth, <= 0 (or outside ``valid_range``) means no surface.
        poses: (N, 3, 4) world-to-camera; Ks: (N, 3, 3).
        valid_range: optional open interval (lo, hi) of depths to keep (the official GT depth PNGs
            are valid in (0.63, 2.37)).
    Returns:
        (P, 3) float64 world points, pixel centres at integer + 0.5 (same as :func:`cameras.pixel_rays`).
    """
    depth = np.asarray(depth, np.float64)
    if depth.ndim != 3:
        raise ValueError(f"depth_to_points: depth must be (N, H, W), got shape {depth.shape}")
    poses = np.asarray(poses, np.float64).reshape(-1, 3, 4)
    Ks = np.asarray(Ks, np.float64).reshape(-1, 3, 3)
    n, h, w = depth.shape
    if len(poses) != n or len(Ks) != n:
        raise ValueError(f"depth_to_points: {n} depth maps but {len(poses)} poses / {len(Ks)} intrinsics")
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    pix = np.stack([xs, ys], -1).reshape(-1, 2)
    out = []
    for i in range(n):
        z = depth[i].reshape(-1)
        ok = z > 0
        if valid_range is not None:
            ok &= (z > valid_range[0]) & (z < valid_range[1])
        if ok.any():
            out.append(cameras.unproject(pix[ok], z[ok], poses[i], Ks[i]))
    return np.concatenate(out, 0) if out else np.zeros((0, 3))


def mesh_points_from_rig(mesh: trimesh.Trimesh, poses, Ks, height: int, width: int) -> np.ndarray:
    """Points (P, 3) of the surface of ``mesh`` seen from the rig: ray-cast depth, back-projected."""
    res = render_mesh(mesh, poses, Ks, height, width, shade=False)
    return depth_to_points(res.depth, poses, Ks)
