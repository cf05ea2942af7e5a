"""The CI skip rule of tests/conftest.py, run on a tiny suite in a subprocess (with and without CI set)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TINY_SUITE = '''
import pytest

def test_passes():
    pass

def test_skips_for_a_missing_fixture():
    pytest.skip("golden fixtures missing")

def test_skips_without_gpu():
    pytest.skip("no GPU here")

@pytest.mark.skipif(True, reason="optional package rembg not installed")
def test_skips_without_an_optional_package():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False
'''

MODULE_SKIP = '''
import pytest
pytest.importorskip("a_package_that_does_not_exist_9f3c")

def test_never_runs():
    pass
'''


def run_tiny_suite(folder: Path, ci: str | None, *files: str) -> subprocess.CompletedProcess:
    """pytest on ``files`` of ``folder`` (the tiny suite beside a copy of our conftest.py), env CI = ``ci``."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only pytest and our conftest: fast
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "--rootdir", str(folder), *files], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_suite")
    shutil.copy(Path(__file__).with_name("conftest.py"), folder / "conftest.py")
    (folder / "test_tiny.py").write_text(TINY_SUITE)
    (folder / "test_module_skip.py").write_text(MODULE_SKIP)
    return folder


def test_outside_ci_skips_are_skips_and_are_listed(tiny_suite):
    res = run_tiny_suite(tiny_suite, None, "test_tiny.py", "test_module_skip.py")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "1 passed, 4 skipped, 1 xfailed" in res.stdout, res.stdout[-3000:]
    assert "would fail under CI: test_tiny.py::test_skips_for_a_missing_fixture: golden fixtures missing" in res.stdout
    assert "allowed: test_tiny.py::test_skips_without_gpu: no GPU here" in res.stdout


def test_under_ci_a_skip_fails_unless_its_reason_is_allowed(tiny_suite):
    res = run_tiny_suite(tiny_suite, "true", "test_tiny.py")
    assert res.returncode == 1, res.stdout[-3000:]
    # the missing fixture fails with its reason printed; the GPU and optional-package skips and the xfail stay
    assert "1 failed, 1 passed, 2 skipped, 1 xfailed" in res.stdout, res.stdout[-3000:]
    assert "FAILED test_tiny.py::test_skips_for_a_missing_fixture" in res.stdout
    assert "does not accept: 'golden fixtures missing'" in res.stdout
    assert "FAILED under CI: test_tiny.py::test_skips_for_a_missing_fixture" in res.stdout


def test_under_ci_a_module_level_skip_is_a_collection_error(tiny_suite):
    res = run_tiny_suite(tiny_suite, "true", "test_module_skip.py")
    assert res.returncode == 2, res.stdout[-3000:]  # pytest's "interrupted": collection errors
    assert "ERROR test_module_skip.py" in res.stdout and "a_package_that_does_not_exist_9f3c" in res.stdout


def test_allow_list_matches_only_what_ci_cannot_provide():
    from conftest import allowed_ci_skip, running_in_ci

    assert allowed_ci_skip("no GPU") and allowed_ci_skip("needs CUDA and xformers")
    assert allowed_ci_skip("optional package segment_anything not installed (pip install ...)")
    for reason in ("Blender not installed", "golden fixtures missing", "reference key table missing",
                   "chromium not found", "sbatch not on PATH", "slow"):
        assert not allowed_ci_skip(reason), reason
    assert isinstance(running_in_ci(), bool)
