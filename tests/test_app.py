"""The web app (app.py) driven in a real, headless Chromium through selenium, with the micro random model.

The server is the documented command (``python app.py checkpoint=... port=...``) in a subprocess; the browser
uploads files, clicks and reads the page as a user would. Set ``APP_SCREENSHOT=<path.png>`` to also save the
screenshot there (that is how ``docs/app.png`` in the README was made).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from test_generate import MICRO_MODEL, build_micro_model, rgba_picture

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or \
    "/usr/bin/chromedriver"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1400,1700"]
SERVER_START_S = 600   # the model loads before the page is served; a busy CI machine is slow
JOB_S = 900            # a ceiling per wait: the whole job took 86-272 s on a shared, overloaded 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app serving the micro model on a free port: (url, output_dir, log path)."""
    root = tmp_path_factory.mktemp("app")
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "model" / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    import torch

    torch.save({"state_dict": build_micro_model().state_dict()}, root / "micro.ckpt")
    port, out, log = _free_port(), root / "out", root / "server.log"
    cmd = [sys.executable, str(REPO / "app.py"), f"hydra.searchpath=[file://{root / 'conf'}]", "model=micro",
           f"checkpoint={root / 'micro.ckpt'}", f"port={port}", "host=127.0.0.1", f"output_dir={out}",
           "device=cpu", "sample_steps=5", "recon_steps=3", "recon.mesh.resolution=32", "recon.turntable.frames=3",
           "recon.turntable.size=24", "recon.train.batch_rays=64", "recon.train.fg_rays=32", "num_threads=1",
           "elevation_estimate.method=silhouette"]  # the page's estimate path (the CLI default is a fixed 30)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if urllib.request.urlopen(url, timeout=5).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"app.py did not serve within {SERVER_START_S} s: {log.read_text()[-2000:]}")
            time.sleep(1)
        yield url, out, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a fresh profile (skips where chromium, chromedriver or selenium is missing)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.access(exe, os.X_OK):
            pytest.skip(f"{exe} is missing (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _wait(driver, what, condition, timeout):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition, message=f"timed out waiting for {what}")


def _css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _status(driver) -> str:
    boxes = _css(driver, "#status textarea")
    return boxes[0].get_attribute("value") if boxes else ""


def _toasts(driver) -> list[str]:
    return [t.text for t in _css(driver, "[data-testid=toast-text]")]


def _drawn(canvas) -> bool:
    """Whether a canvas shows something besides its clear colour (the viewer's is white)."""
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("L"))
    return bool((pixels < 200).mean() > 0.01)


def _upload(driver, path: Path):
    _css(driver, "#input-file input[type=file]")[0].send_keys(str(path))


def test_upload_generate_reconstruct_download(server, browser, tmp_path):
    url, out, log = server
    picture = tmp_path / "teddy.png"
    Image.fromarray(rgba_picture(128)).save(picture)
    browser.get(url)
    _wait(browser, "the page", lambda d: _css(d, "#input-file input[type=file]"), 60)
    _upload(browser, picture)
    _wait(browser, "the elevation estimate", lambda d: "estimated elevation" in _status(d) or _toasts(d), JOB_S)
    assert not _toasts(browser), _toasts(browser)
    elevation = _css(browser, "#elevation input")[0].get_attribute("value")
    assert -10.0 <= float(elevation) <= 40.0  # the estimate's range (conf/generate.yaml elevation_estimate)
    assert _css(browser, "#framed img") and _css(browser, "#mask img")
    steps = _css(browser, "#steps input")[0]
    steps.clear()
    steps.send_keys("2")
    _css(browser, "#generate")[0].click()

    _wait(browser, "16 views", lambda d: len(_css(d, "#views .thumbnail-item img")) == 16 or _toasts(d), JOB_S)
    _wait(browser, "the mesh viewer", lambda d: _css(d, "#mesh-viewer canvas") or _toasts(d), JOB_S)
    _wait(browser, "the downloads", lambda d: len(_css(d, "#downloads a[download], #downloads a.download-link")) >= 3
          or _toasts(d), JOB_S)
    assert not _toasts(browser), _toasts(browser)
    _wait(browser, "the mesh drawn in the 3D viewer", lambda d: _drawn(_css(d, "#mesh-viewer canvas")[0]), JOB_S)
    assert browser.save_screenshot(str(tmp_path / "app.png"))
    shot = Image.open(tmp_path / "app.png").convert("RGB")
    assert shot.getextrema() != ((255, 255), (255, 255), (255, 255))  # not a blank page
    if os.environ.get("APP_SCREENSHOT"):  # a small copy for the README: 2/3 size, 128 colours
        small = shot.resize((shot.width * 2 // 3, shot.height * 2 // 3), Image.LANCZOS)
        small.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(os.environ["APP_SCREENSHOT"], optimize=True)

    # the job on disk: 2 steps as typed in the page, views with their camera exports, the mesh
    (job,) = [p for p in out.iterdir() if p.is_dir() and (p / "views").is_dir()]
    meta = json.loads((job / "views" / "cameras.json").read_text())
    assert meta["sample_steps"] == 2 and meta["input_view"]["source"] == "estimated"
    assert abs(meta["input_view"]["elevation_deg"] - float(elevation)) <= 0.05 + 1e-9  # shown rounded to 0.1
    assert (job / "views" / "transforms.json").is_file() and (job / "mesh" / "colmap" / "images.txt").is_file()

    # the .glb offered by the page is the mesh on disk and loads with trimesh
    import trimesh

    links = {a.get_attribute("href").rsplit("/", 1)[-1]: a.get_attribute("href")
             for a in _css(browser, "#downloads a.download-link")}
    assert {"mesh.glb", "mesh.ply", f"{job.name}.zip"} <= set(links), links
    data = urllib.request.urlopen(links["mesh.glb"], timeout=60).read()
    assert data == (job / "mesh" / "mesh.glb").read_bytes()
    mesh = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
    assert len(mesh.vertices) > 100 and len(mesh.faces) > 100
    assert np.all(np.abs(mesh.bounds) <= 0.6 + 1e-6)  # inside the reconstruction box
    assert "Traceback" not in log.read_text()


def test_non_image_upload_shows_one_line_error(server, browser, tmp_path):
    url, out, log = server
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a picture\n")
    browser.get(url)
    _wait(browser, "the page", lambda d: _css(d, "#input-file input[type=file]"), 60)
    _upload(browser, notes)
    _wait(browser, "the error", lambda d: _toasts(d), 120)
    (message,) = _toasts(browser)
    assert message == "not a readable image: notes.txt (UnidentifiedImageError)"
    assert "estimated elevation" not in _status(browser)
    assert "Traceback" not in browser.page_source and "Traceback" not in log.read_text()


# ------------------------------------------------------------------------------------------------------
# the command line: bad input is one line and exit code 2, before the model loads (no browser needed)
# ------------------------------------------------------------------------------------------------------
def compose_app(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="app", overrides=list(overrides))


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("overrides, message", [
    (["demo_manifest=/nonexistent/demo.json"], "no checkpoint: pass checkpoint=<official syncdreamer-pretrain"),
    (["checkpoint=/nonexistent.ckpt"], "checkpoint not found: /nonexistent.ckpt"),
    (["checkpoint=/nonexistent.ckpt", "port=abc"], "port must be a whole number, got 'abc'"),
    (["checkpoint=/nonexistent.ckpt", "port=70000"], "port must be in [0, 65535], got 70000"),
    (["checkpoint=/nonexistent.ckpt", "port=BUSY"], "cannot serve on 127.0.0.1:BUSY (Address already in use)"),
])
def test_cli_errors_are_one_line_exit_2(overrides, message, busy_port, capsys):
    from syncdreamer.pipelines.app import serve

    overrides = [o.replace("BUSY", str(busy_port)) for o in overrides]
    assert serve(compose_app(*overrides)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + message.replace("BUSY", str(busy_port))) and "\n" not in err, err


def test_demo_manifest_names_the_checkpoint(tmp_path):
    from syncdreamer.checkpoints import CheckpointError
    from syncdreamer.pipelines.app import resolve_checkpoint

    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    manifest = tmp_path / "demo.json"
    manifest.write_text(json.dumps({"checkpoint": str(ckpt), "uid": "abc"}))
    assert resolve_checkpoint(compose_app(f"demo_manifest={manifest}")) == ckpt
    assert resolve_checkpoint(compose_app(f"demo_manifest={manifest}", f"checkpoint={ckpt}")) == ckpt
    ckpt.unlink()
    with pytest.raises(CheckpointError, match="the demo checkpoint .* is missing"):
        resolve_checkpoint(compose_app(f"demo_manifest={manifest}"))


def test_studio_jobs_report_progress_and_take_the_edited_elevation(tmp_path):
    """The page's jobs in process: progress per sampler / NeuS step, an edited elevation recorded as given,
    bad page values as one-line InputErrors."""
    from syncdreamer.pipelines.app import Studio
    from syncdreamer.pipelines.errors import InputError

    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "micro.yaml").write_text(yaml.safe_dump(MICRO_MODEL))
    import torch

    torch.save({"state_dict": build_micro_model().state_dict()}, tmp_path / "micro.ckpt")
    cfg = compose_app(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=micro",
                      f"checkpoint={tmp_path / 'micro.ckpt'}", f"output_dir={tmp_path / 'out'}", "device=cpu",
                      "recon_steps=3", "recon.mesh.resolution=32", "recon.turntable.frames=3",
                      "recon.turntable.size=24", "recon.train.batch_rays=64", "recon.train.fg_rays=32",
                      "elevation_estimate.method=silhouette")
    studio = Studio.load(cfg)
    picture = tmp_path / "teddy.png"
    Image.fromarray(rgba_picture(128)).save(picture)
    item = studio.prepare(str(picture), None, "auto", -1)
    assert item.foreground == "alpha" and item.elevation["source"] == "estimated"
    calls = []
    views_dir = studio.generate(item, 12.5, 2, 7, 2.0, progress=lambda p, desc, unit: calls.append((p, desc)))
    assert calls == [((1, 2), "sampling the views"), ((2, 2), "sampling the views")]
    meta = json.loads((views_dir / "cameras.json").read_text())
    assert meta["input_view"]["source"] == "given" and meta["input_view"]["elevation_deg"] == 12.5
    assert (meta["seed"], meta["sample_steps"]) == (7, 2) and len(list(views_dir.glob("0*.png"))) == 16
    calls.clear()
    summary = studio.reconstruct(views_dir, progress=lambda p, desc, unit: calls.append((p, desc)))
    assert calls == [((i, 3), "fitting NeuS") for i in (1, 2, 3)]
    assert Path(summary["files"]["glb"]).is_file()
    assert Path(summary["files"]["zip"]).name == views_dir.parent.name + ".zip"
    for bad, message in [((item, "abc", 2, 0, 2.0), "elevation must be a number"),
                         ((item, 95, 2, 0, 2.0), "outside [-90, 90]"),
                         ((item, 30, 0, 0, 2.0), "sampling steps must be a whole number >= 1"),
                         ((item, 30, 2.5, 0, 2.0), "sampling steps must be a whole number"),
                         ((item, 30, float("inf"), 0, 2.0), "sampling steps must be a whole number"),
                         ((item, 30, 2, 0, float("nan")), "guidance scale must be a finite number"),
                         ((None, 30, 2, 0, 2.0), "prepare an input first")]:
        with pytest.raises(InputError, match=message.replace("[", r"\[")):
            studio.generate(*bad)
    with pytest.raises(InputError, match="upload an image first"):
        studio.prepare(None, "  ", "auto", -1)
    with pytest.raises(InputError, match="prompts need a text-to-image model"):
        studio.prepare(None, "a teddy", "auto", -1)  # no text2image.model configured
