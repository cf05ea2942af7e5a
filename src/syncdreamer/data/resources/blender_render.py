"""Render meshes into SyncDreamer's 16-view layout, inside Blender (runs under Blender's own Python).

Usage (the driver ``data_prep/render.py`` writes the job file and calls this; you rarely run it by hand)::

    blender -b --factory-startup -noaudio --python data_prep/blender_render.py -- --job job.json
    blender -b --factory-startup -noaudio --python data_prep/blender_render.py -- --probe probe.json

This script imports only Blender's modules and the standard library (numpy when Blender's Python has it:
Blender's glTF importer needs it anyway). All camera math happens outside: the job gives, per view, a
Blender camera-to-world 4x4 matrix computed with ``syncdreamer.cameras``. Several objects are rendered
by one Blender process.

Per object it reproduces the official SyncDreamer render setup:

* import with Blender's importer (.glb/.gltf/.obj/.ply/.fbx/.stl; the glTF/OBJ y-up -> z-up conversion
  defines the world frame), drop imported lamps and cameras;
* normalise: largest side of the world-space bounding box of all mesh vertices = 1, its centre at the
  origin (the transform is recorded in ``render.json``);
* Cycles, transparent film, RGBA PNG, ``resolution`` square, uniform grey world light (colour 0.5,
  strength 1, no lamps), 35 mm lens on a 32 mm sensor, diffuse/glossy bounces 1, transparent/
  transmission bounces 3, pixel filter 0.01, ``samples`` samples, denoising optional;
* a depth map per view: camera z-depth, saved as a 16-bit grey PNG ``<view>_depth.png`` with the
  official encoding ``depth = v / 65535 * (far - near) + near`` (near 0.6, far 2.4 by default) and
  ``v = 0`` for empty pixels (read it with ``syncdreamer.data.layout.read_depth``).

Views render into ``work_dir/<rig>/``; only when every rig of the object is complete are the folders
moved (``os.replace``) to their final places, so a final folder is never half-written. Progress is
appended to the job's ``status`` JSON-lines file: ``start``, then ``done`` or ``error`` (with the reason)
per object; a crash leaves a ``start`` without an end, which the driver records as a failure.
"""
import argparse
import array
import json
import math
import os
import shutil
import struct
import sys
import time
import traceback
import zlib

import bpy
from mathutils import Matrix

try:  # Blender's glTF importer uses numpy (and the alias numpy.bool, removed in numpy 1.24)
    import numpy

    if not hasattr(numpy, "bool"):
        numpy.bool = bool
except ImportError:  # noqa: the depth encoder falls back to pure Python; glTF import will fail clearly
    numpy = None

EMPTY_DEPTH = 1.0e5  # Cycles writes 1e10 where no surface is hit; anything beyond this is empty


# --------------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------------
def parse_args(argv):
    """Arguments after Blender's ``--``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--job", help="job JSON written by data_prep/render.py")
    group.add_argument("--probe", help="write Blender's capabilities (version, numpy, OIDN) to this JSON")
    return parser.parse_args(argv)


def append_status(path, record):
    """Append one JSON line to the status file and flush it to disk (survives a crash right after)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_png16_gray(path, width, height, values):
    """Write a 16-bit greyscale PNG from ``values`` (row-major, top row first, ints 0..65535)."""
    if numpy is not None:
        rows = numpy.asarray(values, dtype=">u2").reshape(height, width)
        raw = numpy.zeros((height, 1 + 2 * width), dtype=numpy.uint8)
        raw[:, 1:] = rows.view(numpy.uint8).reshape(height, 2 * width)
        data = raw.tobytes()
    else:
        buf = bytearray()
        for y in range(height):
            buf.append(0)
            buf += struct.pack(">%dH" % width, *values[y * width:(y + 1) * width])
        data = bytes(buf)

    def chunk(tag, payload):
        body = tag + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(data, 6)) + chunk(b"IEND", b"")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(png)
    os.replace(tmp, path)


def encode_depth(depth_rows_bottom_up, width, height, near, far):
    """Camera z-depth (float list, Blender's bottom-up row order) -> uint16 list, top row first.

    ``v = round((d - near) / (far - near) * 65535)`` clipped to 1..65535; empty pixels get 0.
    """
    if numpy is not None:
        d = numpy.asarray(depth_rows_bottom_up, dtype=numpy.float64).reshape(height, width)[::-1]
        v = numpy.clip(numpy.rint((d - near) / (far - near) * 65535.0), 1, 65535)
        v[~(d < EMPTY_DEPTH)] = 0
        return v.astype(numpy.uint16).ravel()
    out = [0] * (width * height)
    scale = 65535.0 / (far - near)
    for y in range(height):
        src = (height - 1 - y) * width
        for x in range(width):
            d = depth_rows_bottom_up[src + x]
            if d < EMPTY_DEPTH:
                out[y * width + x] = min(65535, max(1, int(round((d - near) * scale))))
    return out


# --------------------------------------------------------------------------------------------------
# scene set-up
# --------------------------------------------------------------------------------------------------
def reset_scene():
    """Start from an empty factory scene (no start-up file, no default cube, lamp or camera)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)


def import_mesh(path, settings):
    """Import ``path`` with Blender's importer for its suffix; raise ``RuntimeError`` with a reason."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise RuntimeError("mesh file not found: %s" % path)
    before = set(bpy.data.objects)
    if ext in (".glb", ".gltf"):
        if numpy is None:
            raise RuntimeError("Blender's Python has no numpy, which its glTF importer needs "
                               "(Debian: apt-get install python3-numpy)")
        result = bpy.ops.import_scene.gltf(filepath=path, merge_vertices=bool(settings["merge_vertices"]))
    elif ext == ".obj":
        if hasattr(bpy.ops.wm, "obj_import"):
            result = bpy.ops.wm.obj_import(filepath=path)
        else:
            result = bpy.ops.import_scene.obj(filepath=path)
    elif ext == ".ply":
        result = bpy.ops.import_mesh.ply(filepath=path)
    elif ext == ".fbx":
        result = bpy.ops.import_scene.fbx(filepath=path)
    elif ext == ".stl":
        result = bpy.ops.import_mesh.stl(filepath=path)
    else:
        raise RuntimeError("unsupported mesh format %r (use .glb .gltf .obj .ply .fbx .stl)" % ext)
    if "FINISHED" not in result:
        raise RuntimeError("Blender's importer returned %s for %s" % (sorted(result), path))
    new = [o for o in bpy.data.objects if o not in before]
    for obj in list(new):
        if obj.type in ("LIGHT", "CAMERA", "LIGHT_PROBE", "SPEAKER"):
            bpy.data.objects.remove(obj, do_unlink=True)
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    if not meshes:
        raise RuntimeError("the file holds no mesh object")
    if settings["vertex_color_material"]:
        for obj in meshes:
            add_vertex_color_material(obj)
    return meshes


def add_vertex_color_material(obj):
    """Give a mesh that has colour attributes but no material a Principled material showing its colours.

    Blender's PLY/OBJ/glTF importers keep vertex colours as attributes but only glTF files with a material
    use them; meshes with any material are left untouched (Objaverse objects normally have one).
    """
    me = obj.data
    if any(m is not None for m in me.materials) or len(me.color_attributes) == 0:
        return
    name = me.color_attributes.active_color.name if me.color_attributes.active_color else me.color_attributes[0].name
    mat = bpy.data.materials.new("vertex_colors")
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    bsdf = nodes.get("Principled BSDF")
    attr = nodes.new("ShaderNodeVertexColor")
    attr.layer_name = name
    mat.node_tree.links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    me.materials.clear()
    me.materials.append(mat)


def world_vertices(objects):
    """World-space vertex coordinates of the evaluated meshes (modifiers, skinning applied)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    chunks = []
    for obj in objects:
        ev = obj.evaluated_get(depsgraph)
        me = ev.to_mesh()
        try:
            n = len(me.vertices)
            if n == 0:
                continue
            mw = ev.matrix_world
            if numpy is not None:
                co = numpy.empty(n * 3, dtype=numpy.float64)
                me.vertices.foreach_get("co", co)
                co = co.reshape(n, 3)
                m = numpy.array([list(r) for r in mw], dtype=numpy.float64)
                chunks.append(co @ m[:3, :3].T + m[:3, 3])
            else:
                chunks.append([tuple(mw @ v.co) for v in me.vertices])
        finally:
            ev.to_mesh_clear()
    if not chunks:
        raise RuntimeError("the meshes hold no vertices")
    return chunks


def normalize_scene(objects):
    """Scale so the largest bbox side is 1 and move the bbox centre to the origin. Returns the transform."""
    chunks = world_vertices(objects)
    if numpy is not None:
        allv = numpy.concatenate(chunks, 0)
        if not numpy.all(numpy.isfinite(allv)):
            raise RuntimeError("the mesh has non-finite vertex coordinates")
        lo, hi = allv.min(0).tolist(), allv.max(0).tolist()
    else:
        flat = [v for c in chunks for v in c]
        lo = [min(v[i] for v in flat) for i in range(3)]
        hi = [max(v[i] for v in flat) for i in range(3)]
    side = max(h - l for h, l in zip(hi, lo))
    if not (side > 0 and math.isfinite(side)):
        raise RuntimeError("the mesh bounding box has zero size")
    scale = 1.0 / side
    center = [(h + l) / 2.0 for h, l in zip(hi, lo)]
    transform = Matrix.Diagonal((scale, scale, scale, 1.0)) @ Matrix.Translation([-c for c in center])
    for obj in bpy.context.scene.objects:
        if obj.parent is None:
            obj.matrix_world = transform @ obj.matrix_world
    bpy.context.view_layer.update()
    return {"scale": scale, "center": center, "bbox_min": lo, "bbox_max": hi}


def setup_render(scene, settings, depth_dir):
    """Cycles, film, world light, camera and the compositor branch that writes the depth pass as EXR."""
    scene.render.engine = "CYCLES"
    cyc = scene.cycles
    cyc.device = "GPU" if settings["device"] == "GPU" else "CPU"
    cyc.samples = int(settings["samples"])
    cyc.use_adaptive_sampling = bool(settings["adaptive_sampling"])
    cyc.use_denoising = bool(settings["denoise"])
    cyc.diffuse_bounces = int(settings["diffuse_bounces"])
    cyc.glossy_bounces = int(settings["glossy_bounces"])
    cyc.transparent_max_bounces = int(settings["transparent_bounces"])
    cyc.transmission_bounces = int(settings["transmission_bounces"])
    cyc.filter_width = float(settings["filter_width"])
    cyc.seed = int(settings["cycles_seed"])
    scene.render.use_persistent_data = True
    if int(settings["threads"]) > 0:
        scene.render.threads_mode = "FIXED"
        scene.render.threads = int(settings["threads"])
    res = int(settings["resolution"])
    scene.render.resolution_x = res
    scene.render.resolution_y = res
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = settings["view_transform"]

    world = bpy.data.worlds.new("uniform_grey")
    world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    g = float(settings["world_color"])
    bg.inputs["Color"].default_value = (g, g, g, 1.0)
    bg.inputs["Strength"].default_value = float(settings["world_strength"])
    scene.world = world

    cam_data = bpy.data.cameras.new("render_camera")
    cam_data.lens = float(settings["lens_mm"])
    cam_data.sensor_width = float(settings["sensor_mm"])
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.clip_start = float(settings["clip_start"])
    cam_data.clip_end = float(settings["clip_end"])
    cam = bpy.data.objects.new("render_camera", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam

    scene.view_layers[0].use_pass_z = True
    scene.use_nodes = True
    tree = scene.node_tree
    for node in list(tree.nodes):
        tree.nodes.remove(node)
    layers = tree.nodes.new("CompositorNodeRLayers")
    composite = tree.nodes.new("CompositorNodeComposite")
    tree.links.new(layers.outputs["Image"], composite.inputs["Image"])
    tree.links.new(layers.outputs["Alpha"], composite.inputs["Alpha"])
    depth_out = tree.nodes.new("CompositorNodeOutputFile")
    depth_out.base_path = depth_dir
    depth_out.format.file_format = "OPEN_EXR"
    depth_out.format.color_mode = "RGB"
    depth_out.format.color_depth = "32"
    tree.links.new(layers.outputs["Depth"], depth_out.inputs[0])
    return cam, depth_out


def read_exr_channel0(path):
    """First channel of a float EXR as a flat list/array (Blender's bottom-up row order) and its size."""
    img = bpy.data.images.load(path, check_existing=False)
    try:
        w, h = img.size
        n = w * h * img.channels
        buf = numpy.empty(n, dtype=numpy.float32) if numpy is not None else array.array("f", bytes(4 * n))
        img.pixels.foreach_get(buf)
        ch = img.channels
        return (buf[0::ch] if numpy is not None else buf[0::ch].tolist()), w, h
    finally:
        bpy.data.images.remove(img)


def render_view(scene, cam, depth_node, c2w, png_path, depth_path, settings, depth_dir):
    """Render one view: RGBA PNG to ``png_path`` and the encoded depth PNG to ``depth_path``."""
    cam.matrix_world = Matrix(c2w)
    stem = "depth_%d_" % os.getpid()
    depth_node.file_slots[0].path = stem
    scene.render.filepath = png_path
    bpy.ops.render.render(write_still=True)
    frame = scene.frame_current
    exr = os.path.join(depth_dir, "%s%04d.exr" % (stem, frame))
    if not os.path.isfile(exr):
        raise RuntimeError("Blender did not write the depth pass (%s)" % exr)
    values, w, h = read_exr_channel0(exr)
    os.remove(exr)
    encoded = encode_depth(values, w, h, float(settings["depth_near"]), float(settings["depth_far"]))
    write_png16_gray(depth_path, w, h, encoded)


# --------------------------------------------------------------------------------------------------
# objects
# --------------------------------------------------------------------------------------------------
def render_object(job_obj, settings):
    """Import, normalise and render every rig of one object, then move the rig folders into place."""
    t0 = time.time()
    reset_scene()
    meshes = import_mesh(job_obj["mesh"], settings)
    norm = normalize_scene(meshes)
    scene = bpy.context.scene
    work = job_obj["work_dir"]
    depth_dir = os.path.join(work, "_depth_exr")
    os.makedirs(depth_dir, exist_ok=True)
    cam, depth_node = setup_render(scene, settings, depth_dir)
    for rig in job_obj["rigs"]:
        rig_dir = os.path.join(work, rig["name"])
        os.makedirs(rig_dir, exist_ok=True)
        for i, c2w in enumerate(rig["c2w"]):
            png = os.path.join(rig_dir, "%03d.png" % i)
            depth = os.path.join(rig_dir, "%03d_depth.png" % i)
            render_view(scene, cam, depth_node, c2w, png, depth, settings, depth_dir)
    shutil.rmtree(depth_dir, ignore_errors=True)
    info = {
        "uid": job_obj["uid"], "mesh": job_obj["mesh"], "normalization": norm,
        "blender": bpy.app.version_string, "settings": settings, "seconds": time.time() - t0,
    }
    for rig in job_obj["rigs"]:
        rig_dir = os.path.join(work, rig["name"])
        with open(os.path.join(rig_dir, "render.json"), "w") as f:
            json.dump(dict(info, rig=rig["name"]), f, indent=1)
    for rig in job_obj["rigs"]:
        final = rig["final_dir"]
        if os.path.exists(final):
            raise RuntimeError("final folder %s appeared during rendering; not overwriting it" % final)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(os.path.join(work, rig["name"]), final)
    shutil.rmtree(work, ignore_errors=True)
    return time.time() - t0


def probe(path):
    """Write what this Blender can do: version, numpy, OpenImageDenoise."""
    try:
        import _cycles

        oidn = bool(getattr(_cycles, "with_openimagedenoise", False))
    except ImportError:
        oidn = False
    info = {"version": bpy.app.version_string, "numpy": numpy is not None, "oidn": oidn,
            "python": sys.version.split()[0]}
    with open(path, "w") as f:
        json.dump(info, f)


def main():
    """Entry point inside Blender."""
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    args = parse_args(argv)
    if args.probe:
        probe(args.probe)
        return
    with open(args.job) as f:
        job = json.load(f)
    settings, status = job["settings"], job["status"]
    for job_obj in job["objects"]:
        append_status(status, {"event": "start", "uid": job_obj["uid"], "time": time.time()})
        try:
            seconds = render_object(job_obj, settings)
        except Exception as exc:  # one broken object never stops the batch
            reason = "%s: %s" % (type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            append_status(status, {"event": "error", "uid": job_obj["uid"], "error": reason,
                                   "traceback": traceback.format_exc()})
            continue
        append_status(status, {"event": "done", "uid": job_obj["uid"], "seconds": seconds})


if __name__ == "__main__":
    main()
