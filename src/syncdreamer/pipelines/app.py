"""The web app behind ``app.py``: image (or prompt) -> foreground -> elevation -> 16 views -> mesh, in a browser.

A gradio Blocks page over the generation and reconstruction pipelines (no logic of its own beyond the wiring):

1. **Input**: upload a picture, or type a prompt when ``text2image.model`` is configured. On upload the
   foreground is extracted (method chosen on the page: :mod:`.foreground`), the picture framed
   (:func:`.generate.prepare_one`) and the elevation estimated (:mod:`.elevation`); the mask, the framed input
   and the estimate are shown, and the estimate can be edited.
2. **Views**: :func:`.generate.generate_views` with a progress bar over the sampler steps; the views are written
   by :func:`.generate.write_view_set` (PNGs, strip, turntable, ``cameras.json``, ``transforms.json``,
   ``colmap/``) and shown as a gallery plus the turntable.
3. **Mesh**: :func:`syncdreamer.recon.pipeline.reconstruct_views` with the configured preset (``recon`` in
   ``conf/app.yaml``) and a progress bar over the NeuS steps; the mesh is shown in a 3D viewer, and
   ``mesh.glb``, ``mesh.ply`` and a zip of the job (views, cameras, mesh) are offered for download.

One job runs at a time (gradio's queue, ``default_concurrency_limit=1``): the model is loaded once and shared.
Every job writes ``<output_dir>/<time>_<name>/{views,mesh}``. Bad input (unreadable file, no foreground,
elevation out of range, ...) is shown on the page as one line (``gr.Error``); unexpected failures too, with
the traceback in the server log only.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from ..checkpoints import CheckpointError
from .elevation import ElevationConfig
from .errors import InputError
from .foreground import METHODS, ForegroundConfig
from ..config import dataclass_from
from ..devices import pick_device
from .generate import (build_sampler, generate_views, load_model, prepare_one, resolve_precision,
                       to_uint8, validate_elevation, view_set_meta, write_view_set, _slug)
from .preprocess import load_image

log = logging.getLogger(__name__)

ELEVATION_DECIMALS = 1  # the page shows the estimate rounded to this many decimals
ELEVATION_SHOWN_TOLERANCE = 0.5 * 10 ** -ELEVATION_DECIMALS + 1e-9
NO_CHECKPOINT = ("no checkpoint: pass checkpoint=<official syncdreamer-pretrain.ckpt or one of ours>, "
                 "or run `make demo` once to train the demo model (outputs/demo/demo.json)")


# ----------------------------------------------------------------------------------------------------------
# checkpoint
# ----------------------------------------------------------------------------------------------------------
def resolve_checkpoint(cfg) -> Path:
    """``checkpoint`` if given, else the one ``make demo`` trained (``demo_manifest`` -> its ``checkpoint``)."""
    given = cfg.get("checkpoint")
    if given:
        path = Path(str(given)).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return path
    manifest = Path(str(cfg.get("demo_manifest") or "outputs/demo/demo.json"))
    if not manifest.is_file():
        raise CheckpointError(NO_CHECKPOINT)
    try:
        path = Path(json.loads(manifest.read_text())["checkpoint"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{manifest} names no checkpoint; {NO_CHECKPOINT}") from None
    if not path.is_file():
        raise CheckpointError(f"the demo checkpoint {path} (from {manifest}) is missing; {NO_CHECKPOINT}")
    return path


# ----------------------------------------------------------------------------------------------------------
# the jobs (plain Python: the gradio layer below only converts arguments and errors)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Studio:
    """The loaded model and the settings every job of the page shares."""

    cfg: object
    model: torch.nn.Module
    device: torch.device
    checkpoint: Path
    precision: str = "fp32"
    text2image_pipe: object = None

    @classmethod
    def load(cls, cfg) -> "Studio":
        checkpoint = resolve_checkpoint(cfg)
        device = pick_device(cfg.get("device", "auto"))
        if cfg.get("num_threads"):
            torch.set_num_threads(_as_int(cfg.num_threads, "num_threads", minimum=1))
        t0 = time.perf_counter()
        precision = resolve_precision(device, cfg.get("precision", "auto"))
        model = load_model(checkpoint, cfg.model).to(device)
        model.set_precision(precision)  # denoiser weights cast once; VAE / CLIP run under autocast
        log.info("model loaded from %s in %.1f s on %s (%s)", checkpoint, time.perf_counter() - t0, device,
                 precision)
        return cls(cfg, model, device, checkpoint, precision)

    @property
    def has_text2image(self) -> bool:
        return bool((self.cfg.get("text2image") or {}).get("model"))

    def picture_from_prompt(self, prompt: str, seed: int) -> np.ndarray:
        from .text2image import TextToImageConfig, load_text2image, text_to_image

        t2i = dataclass_from(TextToImageConfig, self.cfg.get("text2image"))
        if self.text2image_pipe is None:
            self.text2image_pipe = load_text2image(t2i, self.device)
        return text_to_image(prompt, t2i, self.device, int(seed), pipe=self.text2image_pipe)

    def prepare(self, file_path: str | None, prompt: str | None, method: str, crop_size, seed=0):
        """Uploaded file or prompt -> :class:`~.generate.PreparedInput` with the elevation estimated."""
        if method not in METHODS:
            raise InputError(f"unknown foreground method {method!r}; one of {', '.join(METHODS)}")
        crop = _as_int(crop_size, "crop size")
        if file_path:
            name, source = Path(file_path).stem, Path(file_path).name
            try:
                picture = load_image(file_path)
            except InputError as err:  # the message names the upload by its own name, not gradio's cache path
                raise InputError(str(err).replace(str(file_path), source)) from None
        elif prompt and prompt.strip():
            if not self.has_text2image:
                raise InputError("prompts need a text-to-image model: start the app with text2image.model=<folder>")
            name, source = "prompt_" + _slug(prompt), f"prompt: {prompt.strip()}"
            picture = self.picture_from_prompt(prompt.strip(), seed)
            method = "auto" if method == "alpha" else method
        else:
            raise InputError("upload an image first" + (" or type a prompt" if self.has_text2image else ""))
        fg_cfg = dataclass_from(ForegroundConfig, self.cfg.get("foreground_options"))
        elev_cfg = dataclass_from(ElevationConfig, self.cfg.get("elevation_estimate"))
        return prepare_one(_slug(name, 40), source, picture, method, fg_cfg, crop, int(self.model.image_size),
                           None, elev_cfg)

    def job_cfg(self, elevation, steps, seed, cfg_scale):
        """The config of one generation: the app's with the page's numbers (validated)."""
        cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=False))
        cfg.sample_steps = _as_int(steps, "sampling steps", minimum=1)
        cfg.seed = _as_int(seed, "seed", minimum=0)
        cfg.cfg_scale = _as_float(cfg_scale, "guidance scale")
        cfg.elevation = validate_elevation(elevation, cfg.get("elevation_limits") or (-90.0, 90.0))
        if cfg.elevation is None:
            raise InputError("elevation is empty: type the input view's elevation in degrees")
        cfg.checkpoint = str(self.checkpoint)
        return cfg

    def generate(self, item, elevation, steps, seed, cfg_scale, progress=None) -> Path:
        """PreparedInput + page settings -> the written view folder ``<output_dir>/<time>_<name>/views``."""
        if item is None:
            raise InputError("prepare an input first (upload an image)")
        cfg = self.job_cfg(elevation, steps, seed, cfg_scale)
        shown = item.elevation.get("elevation_deg", math.nan)  # the page shows it rounded to 0.1 deg
        if abs(float(cfg.elevation) - shown) > ELEVATION_SHOWN_TOLERANCE:  # edited on the page
            item.elevation = {**item.elevation, "elevation_deg": float(cfg.elevation), "source": "given"}
        sampler = build_sampler(cfg.sampler, self.model)

        def step(i, total, _x):
            if progress is not None:
                progress((i + 1, total), desc="sampling the views", unit="steps")

        views = generate_views(self.model, sampler, item.image, item.elevation["elevation_deg"], 1, int(cfg.seed),
                               self.device, self.precision, int(cfg.get("decode_batch", 16)), callback=step)
        stem = Path(str(cfg.output_dir)) / f"{time.strftime('%Y%m%d-%H%M%S')}_{item.name}"
        job, k = stem, 1
        while job.exists():  # two jobs within one second
            k += 1
            job = stem.with_name(f"{stem.name}_{k}")
        meta = view_set_meta(cfg, self.model, sampler, item, precision=self.precision)
        return write_view_set(job / "views", to_uint8(views)[0], item, meta, int(cfg.output.gif_frame_ms))

    def reconstruct(self, views_dir: Path, progress=None) -> dict:
        """View folder -> ``<job>/mesh`` (mesh.glb, mesh.ply, turntable, cameras) + ``<job>.zip``; summary dict."""
        from ..config import to_plain
        from ..recon.io import load_cameras, load_views
        from ..recon.pipeline import reconstruct_views

        views_dir = Path(views_dir)
        n = int(self.model.view_num)
        views = load_views(views_dir, n)
        poses, Ks = load_cameras(views_dir / "cameras.json", n, views.shape[1])
        recon_cfg = to_plain(self.cfg.recon)
        steps = self.cfg.get("recon_steps")
        total = int(steps if steps is not None else recon_cfg["train"]["steps"])

        def step(i, _model):
            if progress is not None:
                progress((i + 1, total), desc="fitting NeuS", unit="steps")

        out = views_dir.parent / "mesh"
        summary = reconstruct_views(views, poses, Ks, recon_cfg, out, mask_source=self.cfg.get("mask_source", "auto"),
                                    device=self.device, seed=int(self.cfg.seed), steps=steps,
                                    log=lambda msg: log.info("%s", msg), callback=step)
        archive = shutil.make_archive(str(views_dir.parent), "zip", root_dir=views_dir.parent)
        summary["files"]["zip"] = archive
        return summary


def _as_int(value, what: str, minimum: int | None = None) -> int:
    try:
        out = int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what} must be a whole number, got {value!r}") from None
    if out != float(value) or (minimum is not None and out < minimum):
        raise InputError(f"{what} must be a whole number" + (f" >= {minimum}" if minimum is not None else "")
                         + f", got {value!r}")
    return out


def _as_float(value, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return out


# ----------------------------------------------------------------------------------------------------------
# the page
# ----------------------------------------------------------------------------------------------------------
USER_ERRORS = (InputError, CheckpointError, ValueError)


def one_line_errors(fn):
    """Wrap a gradio handler: user errors become a one-line ``gr.Error`` on the page; unexpected ones too, with
    the traceback logged on the server only."""
    import functools

    import gradio as gr

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as err:
            raise gr.Error(_first_line(err), duration=None, print_exception=False) from None
        except Exception as err:  # a bug: keep the page to one line, the details in the server log
            log.exception("job failed")
            raise gr.Error(f"internal error ({type(err).__name__}: {_first_line(err)}); see the server log",
                           duration=None, print_exception=False) from None

    return handler


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _gallery(views_dir: Path, model) -> list:
    az = np.degrees(model.azimuth.detach().cpu().double().numpy()) % 360.0
    return [(str(views_dir / f"{i:03d}.png"), f"view {i}: azimuth {az[i]:.1f} deg") for i in range(len(az))]


def make_handlers(studio: Studio) -> dict:
    """The page's callbacks (plain functions of gradio values), keyed by event."""
    import gradio as gr

    def prepare(file_path, prompt, method, crop_size, seed):
        item = studio.prepare(file_path, prompt, method, crop_size, seed)
        est = item.elevation["elevation_deg"]
        mask = item.mask.astype(np.uint8) * 255
        status = (f"{item.source}: foreground by {item.foreground}, estimated elevation {est:.1f} deg "
                  "(edit it if it looks wrong)")
        return item, mask, item.framed, round(float(est), ELEVATION_DECIMALS), status

    def generate(item, elevation, steps, seed, cfg_scale, progress=gr.Progress()):
        t0 = time.perf_counter()
        views_dir = studio.generate(item, elevation, steps, seed, cfg_scale, progress)
        archive = shutil.make_archive(f"{views_dir.parent}_views", "zip", root_dir=views_dir)
        status = (f"{int(studio.model.view_num)} views at elevation {float(elevation):.1f} deg in "
                  f"{time.perf_counter() - t0:.1f} s -> {views_dir}")
        return str(views_dir), _gallery(views_dir, studio.model), str(views_dir / "turntable.gif"), [archive], status

    def reconstruct(views_dir, progress=gr.Progress()):
        if not views_dir:
            raise InputError("generate the views first")
        summary = studio.reconstruct(Path(views_dir), progress)
        files = summary["files"]
        status = (f"mesh: {summary['vertices']} vertices, {summary['faces']} faces, NeuS {summary['steps']} steps in "
                  f"{summary['fit_seconds']:.1f} s -> {Path(files['glb']).parent}")
        return files["glb"], [files["glb"], files["ply"], files["zip"]], status

    def reconstruct_if_wanted(wanted, views_dir, progress=gr.Progress()):
        if not wanted:
            return gr.skip(), gr.skip(), gr.skip()
        return reconstruct(views_dir, progress)

    return {name: one_line_errors(fn) for name, fn in
            {"prepare": prepare, "generate": generate, "reconstruct": reconstruct,
             "reconstruct_if_wanted": reconstruct_if_wanted}.items()}


def build_ui(studio: Studio):
    """The gradio Blocks page (see the module docstring)."""
    import gradio as gr

    cfg, on = studio.cfg, make_handlers(studio)
    with gr.Blocks(title="SyncDreamer") as page:
        gr.Markdown(f"# SyncDreamer: one image to 16 consistent views and a mesh\nModel: `{studio.checkpoint}`")
        item, views_dir = gr.State(None), gr.State(None)
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="1. Input image", type="filepath", elem_id="input-file")
                prompt = gr.Textbox(label="... or a prompt (text to image)", visible=studio.has_text2image,
                                    elem_id="prompt")
                method = gr.Radio(list(METHODS), value=str(cfg.foreground), label="Foreground method")
                crop = gr.Number(value=int(cfg.crop_size), precision=0, label="Crop size (object side in px; -1: pad)")
            with gr.Column():
                with gr.Row():
                    mask = gr.Image(label="Foreground mask", interactive=False, elem_id="mask", image_mode="L",
                                    height=220)
                    framed = gr.Image(label="Model input", interactive=False, elem_id="framed", image_mode="RGBA",
                                      height=220)
                elevation = gr.Number(label="2. Elevation of the input view (deg): estimated, editable",
                                      elem_id="elevation")
        with gr.Row():
            steps = gr.Number(value=int(cfg.sample_steps), precision=0, label="Sampling steps", elem_id="steps")
            seed = gr.Number(value=int(cfg.seed), precision=0, label="Seed")
            cfg_scale = gr.Number(value=float(cfg.cfg_scale), label="Guidance scale")
            auto = gr.Checkbox(value=bool(cfg.auto_reconstruct), label="Reconstruct the mesh after generating")
        generate = gr.Button("3. Generate the views", variant="primary", elem_id="generate")
        status = gr.Textbox(label="Status", interactive=False, elem_id="status")
        with gr.Row():
            gallery = gr.Gallery(label="Views", columns=8, format="png", height="auto", elem_id="views", scale=3)
            turntable = gr.Image(label="Turntable", interactive=False, type="filepath", elem_id="turntable", scale=1)
        reconstruct = gr.Button("4. Reconstruct the mesh", elem_id="reconstruct")
        with gr.Row():
            viewer = gr.Model3D(label="Mesh", clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="mesh-viewer", scale=2)
            downloads = gr.File(label="Downloads: mesh.glb, mesh.ply, zip of views + cameras + mesh",
                                file_count="multiple", interactive=False, elem_id="downloads", scale=1)

        prep_in, prep_out = [upload, prompt, method, crop, seed], [item, mask, framed, elevation, status]
        upload.upload(on["prepare"], prep_in, prep_out)
        prompt.submit(on["prepare"], prep_in, prep_out)
        method.input(on["prepare"], prep_in, prep_out)
        crop.submit(on["prepare"], prep_in, prep_out)
        gen_out = [views_dir, gallery, turntable, downloads, status]
        generate.click(on["generate"], [item, elevation, steps, seed, cfg_scale], gen_out).success(
            on["reconstruct_if_wanted"], [auto, views_dir], [viewer, downloads, status])
        reconstruct.click(on["reconstruct"], [views_dir], [viewer, downloads, status])
    return page


def serve(cfg) -> int:
    """Load the model, build the page and serve it until interrupted; returns the exit code."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the web app needs gradio: pip install 'syncdreamer[app]'", file=sys.stderr)
        return 2
    host = str(cfg.get("host", "127.0.0.1"))
    try:
        port = _as_int(cfg.get("port", 7860), "port", minimum=0)
        check_port(host, port)  # before the (slow) model load
        studio = Studio.load(cfg)
    except (InputError, CheckpointError) as err:
        print(f"error: {_first_line(err)}", file=sys.stderr)
        return 2
    out = Path(str(cfg.output_dir)).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    page = build_ui(studio)
    page.queue(default_concurrency_limit=1)
    try:
        page.launch(server_name=host, server_port=port, show_error=False, allowed_paths=[str(out)], inbrowser=False)
    except OSError:
        print(f"error: cannot serve on {host}:{port} (taken meanwhile?); pick another port=...", file=sys.stderr)
        return 2
    return 0


def check_port(host: str, port: int) -> None:
    """InputError (one line) when ``host:port`` cannot be bound (in use, or not an address of this machine)."""
    import socket

    if not 0 <= port <= 65535:
        raise InputError(f"port must be in [0, 65535], got {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as err:
        raise InputError(f"cannot serve on {host}:{port} ({err.strerror or err}); pick another port=... or host=...") \
            from None
