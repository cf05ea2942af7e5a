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
SERVER_START_S = 300   # the model loads before the page is served; a busy CI machine is slow
JOB_S = 300            # upload -> views -> mesh on CPU


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
           "recon.turntable.size=24", "recon.train.batch_rays=64", "recon.train.fg_rays=32", "num_threads=1"]
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
    time.sleep(1.0)  # let the 3D viewer draw before the screenshot
    assert browser.save_screenshot(str(tmp_path / "app.png"))
    if os.environ.get("APP_SCREENSHOT"):
        shutil.copy(tmp_path / "app.png", os.environ["APP_SCREENSHOT"])
    assert Image.open(tmp_path / "app.png").size[0] > 0

    # the job on disk: 2 steps as typed in the page, views with their camera exports, the mesh
    (job,) = [p for p in out.iterdir() if p.is_dir() and (p / "views").is_dir()]
    meta = json.loads((job / "views" / "cameras.json").read_text())
    assert meta["sample_steps"] == 2 and abs(meta["input_view"]["elevation_deg"] - float(elevation)) < 1e-6
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
