"""The one camera convention of the project, and converters into it.

Convention (everywhere in this package):

* World frame is **z-up**; objects are normalised into the cube ``[-0.5, 0.5]^3``.
* A pose is a **world-to-camera** 3x4 matrix ``[R | t]`` in the **OpenCV** camera convention
  (x right, y down, z forward): ``x_cam = R @ x_world + t``.
* Intrinsics ``K`` are 3x3 in pixels, with pixel centres at integer coordinates
  (``u = fx * x / z + cx``).
* Azimuth is measured in the xy plane from +x towards +y, elevation from the xy plane towards +z;
  a camera at azimuth ``a``, elevation ``e`` and distance ``d`` sits at
  ``d * (cos a cos e, sin a cos e, sin e)`` and looks at the origin.

The official SyncDreamer rig (16 views, elevation 30 deg, azimuth ``i * 22.5`` deg, distance 1.5,
256x256, f = 280 px) is :func:`make_rig` with its defaults; its output equals the ``poses``, ``Ks``
and ``azimuth`` buffers of the official checkpoint (see ``tests/test_cameras.py``).

Converters: Blender / OpenGL camera-to-world matrices (camera looks along -z, y up) and Zero123's
stored ``RT`` (world-to-camera in Blender's camera axes) convert to and from our poses here and only
here.

Exports for 3D tools (:func:`write_camera_exports`, written beside every ``cameras.json``): nerfstudio's
``transforms.json`` (OpenGL camera-to-world ``transform_matrix``, ``fl_x, fl_y, cx, cy, w, h``) and a COLMAP
text model ``colmap/{cameras,images,points3D}.txt`` (PINHOLE cameras; ``QW QX QY QZ TX TY TZ`` is our
world-to-camera pose, COLMAP also using OpenCV camera axes). Both tools, like our renderers, put the
top-left image corner at ``(0, 0)`` (pixel ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)``) and the principal
point of our rigs at ``(W/2, H/2)``, so intrinsics are written unchanged.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "Rig",
    "make_rig",
    "focal_from_lens",
    "intrinsics",
    "scale_intrinsics",
    "wrap_angle",
    "camera_centers_from_angles",
    "look_at",
    "camera_centers",
    "project",
    "unproject",
    "pixel_rays",
    "to_homogeneous",
    "invert_pose",
    "blender_c2w_to_pose",
    "pose_to_blender_c2w",
    "zero123_rt_to_pose",
    "pose_to_zero123_rt",
    "pose_to_colmap",
    "colmap_to_pose",
    "nerfstudio_transforms",
    "colmap_text_model",
    "write_camera_exports",
]

# OpenCV camera axes = OpenGL/Blender camera axes with y and z flipped.
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])


def focal_from_lens(lens_mm: float = 35.0, sensor_mm: float = 32.0, image_size: int = 256) -> float:
    """Focal length in pixels of a Blender camera (sensor fit horizontal): ``lens / sensor * width``."""
    return float(lens_mm) / float(sensor_mm) * float(image_size)


def intrinsics(focal: float, image_size: int | tuple[int, int]) -> np.ndarray:
    """Pinhole intrinsics (3, 3) with the principal point at the image centre ``(W/2, H/2)``."""
    if isinstance(image_size, int):
        h = w = image_size
    else:
        h, w = image_size
    return np.array([[focal, 0.0, w / 2.0], [0.0, focal, h / 2.0], [0.0, 0.0, 1.0]], dtype=np.float64)


def scale_intrinsics(K, scale: float):
    """Intrinsics for an image resized by ``scale`` (x and y rows scaled; works on (...,3,3))."""
    if isinstance(K, torch.Tensor):
        K = K.clone()
    else:
        K = np.array(K, dtype=np.float64, copy=True)
    K[..., :2, :] = K[..., :2, :] * scale
    return K


def wrap_angle(a):
    """Wrap radians into ``[-pi, pi)``."""
    return (np.asarray(a, dtype=np.float64) + math.pi) % (2 * math.pi) - math.pi


def camera_centers_from_angles(azimuth, elevation, distance) -> np.ndarray:
    """Camera centres (N, 3) from azimuth / elevation (radians) and distance (broadcast)."""
    az, el, d = np.broadcast_arrays(
        np.asarray(azimuth, np.float64), np.asarray(elevation, np.float64), np.asarray(distance, np.float64)
    )
    return np.stack([d * np.cos(az) * np.cos(el), d * np.sin(az) * np.cos(el), d * np.sin(el)], -1)


def look_at(centers, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV world-to-camera poses (N, 3, 4) for cameras at ``centers`` (N, 3) looking at ``target``.

    The camera's x axis is ``forward x up`` (right), y is ``forward x right`` (down), z is forward.
    A camera looking straight along ``up`` is degenerate and raises ``ValueError``.
    """
    centers = np.atleast_2d(np.asarray(centers, np.float64))
    fwd = np.asarray(target, np.float64)[None] - centers
    fwd = fwd / np.linalg.norm(fwd, axis=-1, keepdims=True)
    right = np.cross(fwd, np.asarray(up, np.float64)[None])
    n = np.linalg.norm(right, axis=-1, keepdims=True)
    if np.any(n < 1e-8):
        raise ValueError("look_at: a camera looks along the up vector; pick another up vector or elevation")
    right = right / n
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd], axis=1)  # rows = camera axes in world coordinates
    t = -np.einsum("nij,nj->ni", R, centers)
    return np.concatenate([R, t[..., None]], axis=-1)


@dataclass
class Rig:
    """A set of cameras: ``poses`` (N,3,4) w2c OpenCV, ``Ks`` (N,3,3), angles in radians (N,)."""

    poses: np.ndarray
    Ks: np.ndarray
    azimuths: np.ndarray
    elevations: np.ndarray
    distances: np.ndarray
    image_size: int

    def __len__(self) -> int:
        return len(self.poses)

    def torch(self, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """The rig as tensors: ``poses``, ``Ks``, ``azimuth`` (wrapped to [-pi, pi)), ``elevation``, ``distance``."""
        return {
            "poses": torch.as_tensor(self.poses, dtype=dtype),
            "Ks": torch.as_tensor(self.Ks, dtype=dtype),
            "azimuth": torch.as_tensor(wrap_angle(self.azimuths), dtype=dtype),
            "elevation": torch.as_tensor(self.elevations, dtype=dtype),
            "distance": torch.as_tensor(self.distances, dtype=dtype),
        }

    def to_meta(self) -> list:
        """The official ``meta.pkl`` list ``[K, azimuths, elevations, distances, poses]`` (float32)."""
        return [
            self.Ks[0].astype(np.float32),
            self.azimuths.astype(np.float32),
            self.elevations.astype(np.float32),
            self.distances.astype(np.float32),
            self.poses.astype(np.float32),
        ]


def make_rig(
    n_views: int = 16,
    elevation_deg: float | np.ndarray = 30.0,
    distance: float = 1.5,
    image_size: int = 256,
    focal: float = 280.0,
    azimuth_start_deg: float = 0.0,
) -> Rig:
    """The fixed N-view turntable: view i at azimuth ``start + i * 360/N`` deg.

    ``elevation_deg`` is a scalar (fixed rig) or an array of N per-view elevations (random input rig).
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    az = np.deg2rad(azimuth_start_deg + np.arange(n_views) * 360.0 / n_views)
    el = np.deg2rad(np.broadcast_to(np.asarray(elevation_deg, np.float64), (n_views,))).copy()
    dist = np.full(n_views, float(distance))
    poses = look_at(camera_centers_from_angles(az, el, dist))
    K = intrinsics(focal, image_size)
    return Rig(poses=poses, Ks=np.repeat(K[None], n_views, 0), azimuths=az, elevations=el, distances=dist,
               image_size=image_size)


# ----------------------------------------------------------------------------------------------------------
# Pose algebra (numpy or torch, batched over leading dimensions)
# ----------------------------------------------------------------------------------------------------------
def to_homogeneous(pose):
    """(...,3,4) -> (...,4,4)."""
    if isinstance(pose, torch.Tensor):
        bottom = torch.zeros(*pose.shape[:-2], 1, 4, dtype=pose.dtype, device=pose.device)
        bottom[..., 0, 3] = 1
        return torch.cat([pose, bottom], -2)
    pose = np.asarray(pose)
    bottom = np.zeros((*pose.shape[:-2], 1, 4), pose.dtype)
    bottom[..., 0, 3] = 1
    return np.concatenate([pose, bottom], -2)


def invert_pose(pose):
    """Inverse of a rigid (...,3,4) transform (w2c <-> c2w)."""
    R, t = pose[..., :3, :3], pose[..., :3, 3:]
    if isinstance(pose, torch.Tensor):
        Rt = R.transpose(-1, -2)
        return torch.cat([Rt, -Rt @ t], -1)
    Rt = np.swapaxes(R, -1, -2)
    return np.concatenate([Rt, -Rt @ t], -1)


def camera_centers(pose):
    """Camera centres (...,3) of world-to-camera poses (...,3,4)."""
    return invert_pose(pose)[..., :3, 3]


def project(points, pose, K, eps: float = 1e-8):
    """Project world points (...,P,3) with pose (...,3,4), K (...,3,3) -> pixels (...,P,2), depth (...,P).

    Depth is the camera z coordinate. Points behind the camera get ``depth <= 0`` (their pixels are
    meaningless); callers mask them.
    """
    is_t = isinstance(points, torch.Tensor)
    tr = (lambda a: a.transpose(-1, -2)) if is_t else (lambda a: np.swapaxes(a, -1, -2))
    cam = points @ tr(pose[..., :3, :3]) + pose[..., None, :3, 3]
    z = cam[..., 2]
    zs = z.clamp(min=eps) if is_t else np.maximum(z, eps)
    pix = cam @ tr(K)
    return pix[..., :2] / zs[..., None], z


def unproject(pixels, depth, pose, K):
    """Inverse of :func:`project`: pixels (...,P,2) at camera-z ``depth`` (...,P) -> world points (...,P,3)."""
    is_t = isinstance(pixels, torch.Tensor)
    inv = torch.linalg.inv if is_t else np.linalg.inv
    tr = (lambda a: a.transpose(-1, -2)) if is_t else (lambda a: np.swapaxes(a, -1, -2))
    cat = torch.cat if is_t else np.concatenate
    ones = torch.ones_like(pixels[..., :1]) if is_t else np.ones_like(pixels[..., :1])
    rays = cat([pixels, ones], -1) @ tr(inv(K))
    cam = rays * depth[..., None]
    c2w = invert_pose(pose)
    return cam @ tr(c2w[..., :3, :3]) + c2w[..., None, :3, 3]


def pixel_rays(pose: torch.Tensor, K: torch.Tensor, height: int, width: int):
    """Per-pixel rays of one camera: origins (H*W,3) and unit directions (H*W,3), pixel centres at
    integer coordinates + 0.5 (the centre of each pixel of an image of size height x width)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=pose.dtype, device=pose.device) + 0.5,
                            torch.arange(width, dtype=pose.dtype, device=pose.device) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2)
    far = unproject(pix, torch.ones(len(pix), dtype=pose.dtype, device=pose.device), pose, K)
    origin = camera_centers(pose).expand_as(far)
    d = far - origin
    return origin, d / d.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------
# Converters from other conventions
# ----------------------------------------------------------------------------------------------------------
def blender_c2w_to_pose(c2w) -> np.ndarray:
    """Blender/OpenGL camera-to-world (3x4 or 4x4; camera looks along -z, y up) -> OpenCV w2c (3,4)."""
    c2w = np.asarray(c2w, np.float64)[..., :3, :4]
    R = c2w[..., :3, :3] @ _FLIP_YZ
    cv_c2w = np.concatenate([R, c2w[..., :3, 3:]], -1)
    return invert_pose(cv_c2w)


def pose_to_blender_c2w(pose) -> np.ndarray:
    """OpenCV w2c (3,4) -> Blender/OpenGL camera-to-world (4,4)."""
    c2w = invert_pose(np.asarray(pose, np.float64))
    R = c2w[..., :3, :3] @ _FLIP_YZ
    return to_homogeneous(np.concatenate([R, c2w[..., :3, 3:]], -1))


def zero123_rt_to_pose(rt) -> np.ndarray:
    """Zero123's stored ``RT`` (3x4 world-to-camera in Blender camera axes: x right, y up, z back)
    -> OpenCV w2c (3,4): the y and z rows flip."""
    return _FLIP_YZ @ np.asarray(rt, np.float64)[..., :3, :4]


def pose_to_zero123_rt(pose) -> np.ndarray:
    """OpenCV w2c (3,4) -> Zero123's ``RT`` (its own inverse: flip the y and z rows)."""
    return _FLIP_YZ @ np.asarray(pose, np.float64)[..., :3, :4]


# ----------------------------------------------------------------------------------------------------------
# Exports for other tools: nerfstudio transforms.json, COLMAP text model
# ----------------------------------------------------------------------------------------------------------
def pose_to_colmap(pose) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV w2c (3,4) -> COLMAP ``(qvec, tvec)``: unit quaternion ``(w, x, y, z)`` with ``w >= 0`` and (3,)."""
    from scipy.spatial.transform import Rotation

    pose = np.asarray(pose, np.float64)
    x, y, z, w = Rotation.from_matrix(pose[:3, :3]).as_quat()
    q = np.array([w, x, y, z])
    return (q if q[0] >= 0 else -q), pose[:3, 3].copy()


def colmap_to_pose(qvec, tvec) -> np.ndarray:
    """COLMAP ``(qvec (w, x, y, z), tvec)`` -> OpenCV w2c (3,4) (the inverse of :func:`pose_to_colmap`)."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = np.asarray(qvec, np.float64)
    R = Rotation.from_quat([x, y, z, w]).as_matrix()
    return np.concatenate([R, np.asarray(tvec, np.float64).reshape(3, 1)], 1)


def _shared_intrinsics(Ks) -> bool:
    Ks = np.asarray(Ks, np.float64)
    return bool(np.allclose(Ks, Ks[:1], rtol=0, atol=1e-9))


def nerfstudio_transforms(poses, Ks, width: int, height: int, files: list[str]) -> dict:
    """nerfstudio ``transforms.json`` content for views ``files`` (paths relative to the json's folder).

    Intrinsics go at the top level when every view shares them, else into each frame; ``transform_matrix``
    is the OpenGL/Blender camera-to-world 4x4 of :func:`pose_to_blender_c2w` (world z-up, as ours)."""
    poses, Ks = np.asarray(poses, np.float64), np.asarray(Ks, np.float64)
    if not len(poses) == len(Ks) == len(files):
        raise ValueError(f"{len(poses)} poses, {len(Ks)} intrinsics and {len(files)} files must match")

    def intr(K):
        return {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
                "w": int(width), "h": int(height)}

    shared = _shared_intrinsics(Ks)
    out = {"camera_model": "OPENCV", **(intr(Ks[0]) if shared else {}),
           "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": []}
    for pose, K, name in zip(poses, Ks, files):
        frame = {"file_path": str(name), "transform_matrix": pose_to_blender_c2w(pose).tolist()}
        out["frames"].append(frame if shared else {**frame, **intr(K)})
    return out


def colmap_text_model(poses, Ks, width: int, height: int, files: list[str]) -> dict[str, str]:
    """COLMAP text model ``{"cameras.txt", "images.txt", "points3D.txt"}`` (PINHOLE, one camera per distinct
    K, no 2D points); image names are ``files`` (relative to the image folder given to COLMAP)."""
    poses, Ks = np.asarray(poses, np.float64), np.asarray(Ks, np.float64)
    if not len(poses) == len(Ks) == len(files):
        raise ValueError(f"{len(poses)} poses, {len(Ks)} intrinsics and {len(files)} files must match")
    cam_ids: list[int] = []
    cam_lines: list[str] = []
    distinct: list[np.ndarray] = []
    for K in Ks:
        match = [i for i, d in enumerate(distinct) if np.allclose(d, K, rtol=0, atol=1e-9)]
        if not match:
            distinct.append(K)
            cam_lines.append(f"{len(distinct)} PINHOLE {int(width)} {int(height)} "
                             + " ".join(repr(float(v)) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2])))
        cam_ids.append(match[0] + 1 if match else len(distinct))
    img_lines = []
    for i, (pose, cam_id, name) in enumerate(zip(poses, cam_ids, files)):
        q, t = pose_to_colmap(pose)
        img_lines += [f"{i + 1} {' '.join(repr(float(v)) for v in (*q, *t))} {cam_id} {name}", ""]
    return {
        "cameras.txt": "# Camera list with one line of data per camera:\n"
                       "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                       f"# Number of cameras: {len(distinct)}\n" + "\n".join(cam_lines) + "\n",
        "images.txt": "# Image list with two lines of data per image:\n"
                      "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                      "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
                      f"# Number of images: {len(files)}, mean observations per image: 0\n" + "\n".join(img_lines),
        "points3D.txt": "# 3D point list (empty: cameras only)\n",
    }


def write_camera_exports(folder, poses, Ks, width: int, height: int, files: list[str]) -> list:
    """Write ``transforms.json`` and ``colmap/*.txt`` for the views ``files`` (relative to ``folder``) into
    ``folder``; returns the written paths. COLMAP image names are relative to ``folder`` too."""
    folder = Path(folder)
    (folder / "colmap").mkdir(parents=True, exist_ok=True)
    written = [folder / "transforms.json"]
    written[0].write_text(json.dumps(nerfstudio_transforms(poses, Ks, width, height, files), indent=1))
    for name, text in colmap_text_model(poses, Ks, width, height, files).items():
        (folder / "colmap" / name).write_text(text)
        written.append(folder / "colmap" / name)
    return written
