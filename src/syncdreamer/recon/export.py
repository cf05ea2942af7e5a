"""Mesh extraction (marching cubes, PyMCubes) with vertex colours, mesh files and a turntable GIF.

* :func:`extract_mesh` evaluates the SDF on a ``resolution^3`` lattice over ``[-bound, bound]^3``,
  runs marching cubes at level 0 (faces oriented outwards) and colours each vertex with the colour
  network looking straight at it (view direction = -normal).
* :func:`save_mesh` writes ``.ply`` (world frame, z up) and ``.glb`` (glTF is y-up: the world is
  rotated with :data:`syncdreamer.data.mesh_io.Z_UP_TO_Y_UP`, so loading it back with
  :func:`syncdreamer.data.mesh_io.load_mesh_world` returns the world frame).
* :func:`turntable` ray-casts the extracted mesh around the object (CPU, Embree when available) and
  writes an animated GIF (or any format imageio can write, e.g. ``.mp4`` with imageio-ffmpeg).
"""
from __future__ import annotations

from pathlib import Path

import mcubes
import numpy as np
import torch
import trimesh

from syncdreamer import cameras
from syncdreamer.imaging import composite_on_white

__all__ = ["extract_mesh", "save_mesh", "turntable"]


@torch.no_grad()
def _sdf_grid(sdf_fn, resolution: int, bound: float, chunk: int, device) -> np.ndarray:
    lin = torch.linspace(-bound, bound, resolution, device=device)
    out = np.empty((resolution,) * 3, np.float32)
    for i in range(resolution):  # one x-slab at a time keeps memory bounded for 512^3
        yy, zz = torch.meshgrid(lin, lin, indexing="ij")
        pts = torch.stack([torch.full_like(yy, float(lin[i])), yy, zz], -1).reshape(-1, 3)
        vals = torch.cat([sdf_fn(p) for p in pts.split(chunk)])
        out[i] = vals.reshape(resolution, resolution).float().cpu().numpy()
    return out


def extract_mesh(model, resolution: int = 512, bound: float = 0.6, chunk: int = 65536,
                 colors: bool = True) -> trimesh.Trimesh:
    """Marching-cubes mesh of the zero level set of ``model.sdf_net`` (a :class:`NeuSModel`).

    Returns a Trimesh in world units with uint8 vertex colours (RGBA); raises ``ValueError`` when the
    SDF has no zero crossing inside the box."""
    dev = next(model.parameters()).device
    sdf = _sdf_grid(model.sdf_net.sdf, resolution, bound, chunk, dev)
    if not (sdf.min() < 0 < sdf.max()):
        raise ValueError(f"no surface: the SDF does not change sign in [-{bound}, {bound}]^3 "
                         f"(min {sdf.min():.3f}, max {sdf.max():.3f})")
    verts, faces = mcubes.marching_cubes(-sdf, 0.0)  # PyMCubes wants inside > level
    verts = verts / (resolution - 1) * 2 * bound - bound
    mesh = trimesh.Trimesh(verts, faces.astype(np.int64), process=True)
    if mesh.is_volume and mesh.volume < 0 or (not mesh.is_volume and _mostly_inward(mesh)):
        mesh.invert()
    if colors and len(mesh.vertices):
        v = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=dev)
        cols = []
        for p in v.split(chunk):
            _, feat, grad = model.sdf_net.sdf_and_gradient(p, create_graph=False)
            n = torch.nn.functional.normalize(grad, dim=-1)
            cols.append(model.color_net(p, grad, -n, feat).detach())
        rgb = (torch.cat(cols).clamp(0, 1) * 255).round().byte().cpu().numpy()
        mesh.visual.vertex_colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    return mesh


def _mostly_inward(mesh: trimesh.Trimesh) -> bool:
    """Heuristic orientation test for open meshes: normals point towards the centroid on average."""
    c = mesh.triangles_center - mesh.centroid
    return float((c * mesh.face_normals).sum(-1).mean()) < 0


def save_mesh(mesh: trimesh.Trimesh, path) -> Path:
    """Write ``mesh`` (world frame) as .ply/.obj (as is) or .glb/.gltf (rotated to glTF's y-up)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    m = mesh
    if suffix in (".glb", ".gltf", ".obj"):
        from syncdreamer.data.mesh_io import Z_UP_TO_Y_UP
        m = mesh.copy()
        T = np.eye(4)
        T[:3, :3] = Z_UP_TO_Y_UP
        m.apply_transform(T)
    m.export(str(path))
    return path


def turntable(mesh: trimesh.Trimesh, path, frames: int = 180, size: int = 256, elevation_deg: float = 30.0,
              distance: float = 1.5, focal: float = 280.0, fps: int = 30) -> Path:
    """Render ``frames`` views of ``mesh`` on a circle (white background) and write an animation."""
    import imageio.v2 as imageio

    from syncdreamer.raycast import render_mesh

    rig = cameras.make_rig(n_views=frames, elevation_deg=elevation_deg, distance=distance, image_size=size,
                           focal=focal * size / 256.0)
    res = render_mesh(mesh, rig.poses, rig.Ks, size, size, shade=True)
    rgb = composite_on_white(res.rgba)
    imgs = [(f * 255).round().astype(np.uint8) for f in rgb]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        imageio.mimsave(str(path), imgs, duration=1000.0 / fps, loop=0)
    else:
        imageio.mimsave(str(path), imgs, fps=fps)
    return path
