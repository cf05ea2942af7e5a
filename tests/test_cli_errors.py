"""Bad command lines of the entry points: one line on stderr, exit code 2, no traceback, nothing created.

Each case runs the real script in a subprocess (Hydra and all), from an empty working folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from syncdreamer.cli import check_missing, missing_message, require_options

REPO = Path(__file__).resolve().parents[1]


def run_script(script: str, args, cwd: Path, timeout: float = 180):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src"), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_usage_error(res, needle: str):
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    assert "Traceback" not in res.stderr + res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("[")]  # [..] = log lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr[-1500:]


@pytest.fixture
def picture(tmp_path) -> Path:
    img = np.zeros((48, 48, 4), np.uint8)
    img[10:40, 14:34] = (200, 40, 40, 255)
    path = tmp_path / "obj.png"
    Image.fromarray(img).save(path)
    return path


@pytest.fixture
def junk_checkpoint(tmp_path) -> Path:
    """Not a checkpoint: a run that got as far as loading a model would fail with a checkpoint message."""
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"\x00not a checkpoint" * 4)
    return path


GENERATE_CASES = {
    "crop_size": (["crop_size=abc"], "crop_size=abc is invalid"),
    "sample_num": (["sample_num=abc"], "sample_num=abc is invalid"),
    "border": (["foreground_options.border=abc"], "foreground_options.border must be an integer, got 'abc'"),
    "use_ema": (["use_ema=maybe"], "use_ema=maybe is invalid"),
    "cuda_without_gpu": (["device=cuda"], "no CUDA GPU is available"),
}


@pytest.mark.parametrize("case", sorted(GENERATE_CASES))
def test_generate_bad_option(case, tmp_path, picture, junk_checkpoint):
    if case == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args, needle = GENERATE_CASES[case]
    out = tmp_path / "out"
    res = run_script("generate.py", [f"checkpoint={junk_checkpoint}", f"input={picture}", "elevation=30",
                                     f"output_dir={out}", *args], tmp_path)
    assert_one_line_usage_error(res, needle)
    assert not [p for p in out.glob("*") if p.is_dir() and not p.name.startswith(".")]  # Hydra's own log only


def test_generate_overwrite_false_is_checked_before_the_model_loads(tmp_path, picture, junk_checkpoint):
    """The checkpoint is junk: the run must stop at the existing folder, before reading it."""
    out = tmp_path / "out"
    (out / "obj").mkdir(parents=True)
    (out / "obj" / "000.png").write_bytes(b"earlier result")
    res = run_script("generate.py", [f"checkpoint={junk_checkpoint}", f"input={picture}", "elevation=30",
                                     f"output_dir={out}", "overwrite=false"], tmp_path)
    assert_one_line_usage_error(res, f"output folder exists: {out / 'obj'}")
    assert (out / "obj" / "000.png").read_bytes() == b"earlier result"


@pytest.mark.parametrize("script,args,needle", [
    ("generate.py", [], "missing required option checkpoint=..."),
    ("reconstruct.py", [], "missing required option views=..."),
    ("evaluate.py", [], "missing required option gt_dir=..."),
    ("data_prep/download.py", [], "missing required option download_dir=..."),
    ("data_prep/render.py", [], "missing required options input=... output_dir=..."),
    ("data_prep/render.py", ["input=meshes"], "missing required option output_dir=..."),
    ("data_prep/validate.py", [], "missing required option root=..."),
])
def test_missing_required_option(script, args, needle, tmp_path):
    res = run_script(script, args, tmp_path)
    assert_one_line_usage_error(res, needle)
    assert "???" not in res.stderr
    assert not list(tmp_path.iterdir())  # not even Hydra's run folder


def test_validate_with_a_mistyped_root_creates_nothing(tmp_path):
    typo = tmp_path / "renders_tpyo"
    res = run_script("data_prep/validate.py", [f"root={typo}"], tmp_path)
    assert_one_line_usage_error(res, f"root={typo} does not exist")
    assert not typo.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("device,needle", [("cuda", "no CUDA GPU is available"), ("cudax", "unknown device 'cudax'")])
def test_reconstruct_unusable_device(device, needle, tmp_path):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    views = tmp_path / "views"
    views.mkdir()
    res = run_script("reconstruct.py", [f"views={views}", f"device={device}", f"output_dir={tmp_path / 'out'}"],
                     tmp_path)
    assert_one_line_usage_error(res, needle)


# ------------------------------------------------------------------------------------- the helpers in-process
def test_require_options_reads_the_config_file_and_the_command_line(tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("a: ???\nb: ???\nc: 1\n")
    require_options(conf, ["a=1", "+b=2"])  # both given: no exit
    require_options(conf, ["--help"])  # Hydra flags are Hydra's business
    with pytest.raises(SystemExit) as exc:
        require_options(conf, ["a=1", "c=3"], script="x.py")
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: missing required option b=... (python x.py b=<value> ...)\n"


def test_a_global_config_group_on_the_command_line_can_set_a_required_option(tmp_path, capsys):
    """`python evaluate.py benchmark=proxy checkpoint=...`: the benchmark group sets gt_dir, so it is not missing."""
    conf = tmp_path / "c.yaml"
    conf.write_text("gt_dir: ???\ncheckpoint: null\n")
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "benchmark" / "proxy.yaml").write_text("# @package _global_\ngt_dir: /data\ncheckpoint: ???\n")
    (tmp_path / "benchmark" / "local.yaml").write_text("gt_dir: /data\n")  # not global: sets benchmark.gt_dir
    require_options(conf, ["benchmark=proxy"])
    for argv in (["benchmark=local"], ["benchmark=nothing"], []):
        with pytest.raises(SystemExit):
            require_options(conf, argv, script="e.py")
        assert "missing required option gt_dir=..." in capsys.readouterr().err


def test_proxy_benchmark_command_reaches_its_own_checks(tmp_path):
    res = run_script("evaluate.py", ["benchmark=proxy", f"checkpoint={tmp_path / 'none.ckpt'}",
                                     f"output_dir={tmp_path / 'out'}"], tmp_path)
    assert_one_line_usage_error(res, "none.ckpt not found")


def test_check_missing_names_nested_keys(capsys):
    from omegaconf import OmegaConf

    check_missing(OmegaConf.create({"a": 1, "b": {"c": 2}}))
    with pytest.raises(SystemExit):
        check_missing(OmegaConf.create({"a": "???", "b": {"c": "???"}}), script="y.py")
    assert capsys.readouterr().err.startswith("error: missing required options a=... b.c=...")
    assert missing_message(["v"]).startswith("missing required option v=...")


def test_train_bad_render_setting_of_a_prepared_data_set_is_one_line(tmp_path):
    """`data=proxy` renders its data on first use: a bad `data.prepare.render` value (here an input elevation
    range with low > high) stops before Blender with one line naming the key, not a traceback."""
    res = run_script("train.py", ["experiment=proxy", "logger=csv", f"paths.data_dir={tmp_path / 'data'}",
                                  f"hydra.run.dir={tmp_path / 'run'}",
                                  "data.prepare.render.input_elevation=[50.0,10.0]"], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr[-1500:]
    lines = [ln for ln in res.stderr.splitlines()  # log lines ([..] Hydra's, INFO: Lightning's) left out
             if ln.strip() and not ln.startswith(("[", "INFO:"))]
    assert len(lines) == 1 and lines[0].startswith("error: data.prepare.render: input_elevation must be [low, high]"), \
        res.stderr[-1500:]


def test_train_bad_data_module_value_is_one_line(tmp_path):
    """A bad data.* value is refused by the data module while Hydra builds it: the one-line DataError, not
    Hydra's instantiation wrapper (which used to end the run with rc 1 and a 'full_key: data' block)."""
    res = run_script("train.py", ["experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}", "data.mirror_prob=2"],
                     tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("[", "INFO:"))]
    assert res.returncode == 2 and lines == ["error: data.mirror_prob=2 must be a probability in [0, 1] "
                                             "(0 = no mirrored items)"], res.stderr[-1500:]
