"""Suite-wide settings and the CI skip rule.

Offline by default: no Hugging Face download, no W&B network.

**CI skip rule.** Under CI (env ``CI`` is ``true``/``1``/``yes``) a skipped test fails the run unless its
reason matches one of :data:`CI_ALLOWED_SKIPS` below: a test may skip in CI only because the CI machine
cannot have what it needs (a GPU, an optional package we do not install there). Everything CI installs
(Blender, Chromium, SLURM, the golden fixtures, the reference key table) must be present, so a skip for
those fails. The rule turns such a skip into a failure whose report prints the reason and this rule, and
the terminal summary lists every skip with its reason and whether the rule accepted it.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

# Reasons a test may skip under CI (regular expressions, searched case-insensitively in the skip reason).
# Edit this list, nothing else, to accept a new kind of skip; keep each entry a thing CI cannot provide.
CI_ALLOWED_SKIPS: list[str] = [
    r"\bno GPU\b",
    r"\bneeds CUDA\b",
    r"\bxformers\b",
    r"\bmulti-GPU\b",
    r"^optional package \S+ not installed",
]


_SKIPS = pytest.StashKey[list]()  # (nodeid, reason, allowed) of every skip, for the terminal summary


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def allowed_ci_skip(reason: str) -> bool:
    """True when a skip with this reason is acceptable under CI."""
    return any(re.search(p, reason, re.IGNORECASE) for p in CI_ALLOWED_SKIPS)


def _skip_reason(report) -> str:
    """The human reason of a skipped report (pytest stores (path, line, 'Skipped: reason'))."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def _apply_ci_skip_rule(config, report) -> None:
    """Record a skipped report; under CI turn it into a failure unless its reason is allowed."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    ok = allowed_ci_skip(reason)
    config.stash.setdefault(_SKIPS, []).append((report.nodeid, reason, ok))
    if running_in_ci() and not ok:
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI with a reason that tests/conftest.py does not accept: {reason!r}\n"
                           f"(CI must provide what this test needs; allowed skip reasons: {CI_ALLOWED_SKIPS})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _apply_ci_skip_rule(item.config, outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Module-level skips (``pytest.importorskip``, ``allow_module_level=True``) follow the same rule."""
    outcome = yield
    _apply_ci_skip_rule(collector.config, outcome.get_result())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skips = config.stash.get(_SKIPS, [])
    if not skips:
        return
    terminalreporter.section("skips and the CI skip rule (tests/conftest.py)")
    for nodeid, reason, ok in skips:
        verdict = "allowed" if ok else ("FAILED under CI" if running_in_ci() else "would fail under CI")
        terminalreporter.write_line(f"{verdict}: {nodeid}: {reason}")
