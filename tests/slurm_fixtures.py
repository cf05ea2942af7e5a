"""A private single-node SLURM for the tests (session-scoped), started with slurm/local/start.sh.

Use it in a test module with ``from slurm_fixtures import slurm_cluster`` (tests/ is on sys.path); a test that
takes the ``slurm_cluster`` fixture gets a :class:`LocalSlurm` whose ``env`` points ``SLURM_CONF`` at the
private config, and helpers to submit a job and wait for it. Everything the cluster writes (munge key and
socket, config, state, spool, logs, job completion log) lives under the session's tmp dir on free ports; an
existing cluster (``/etc/slurm``, the system munge socket) is never touched. Without ``slurmctld`` the tests
skip with the reason "SLURM not installed".
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "slurm" / "local"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


@dataclass
class LocalSlurm:
    """A running private SLURM: ``dir`` holds its files, ``env`` is ``os.environ`` + ``SLURM_CONF``."""

    dir: Path
    env: dict

    def run(self, *args, **kw) -> subprocess.CompletedProcess:
        """A SLURM client command (``sbatch``, ``squeue`` ...) against this cluster."""
        return subprocess.run(list(args), env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True,
                              timeout=kw.pop("timeout", 60), **kw)

    def sbatch(self, *args, cwd=None, env=None) -> str:
        """Submits a batch job; returns its job id."""
        proc = self.run("sbatch", "--parsable", *map(str, args), cwd=cwd, env=env or {})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    def job_states(self, job_id: str) -> dict[str, str]:
        """``{job id (array tasks as <id>_<k>): state}`` from ``scontrol show job`` (finished jobs stay listed for
        MinJobAge = 300 s; there is no accounting database, hence no sacct)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            task = fields.get("ArrayTaskId")
            states[f"{fields['ArrayJobId']}_{task}" if task else fields["JobId"]] = fields["JobState"]
        return states

    def requeues(self, job_id: str) -> int:
        """How often job ``job_id`` was requeued (its PENDING entries in the job completion log)."""
        log = self.dir / "log" / "jobcomp.txt"
        lines = log.read_text().splitlines() if log.is_file() else []
        return sum(f"JobId={job_id} " in line and "JobState=PENDING" in line for line in lines)

    def wait(self, job_id: str, timeout: float = 600, tasks: int = 1) -> dict[str, str]:
        """Waits until ``tasks`` jobs of ``job_id`` are no longer queued or running; returns their final states."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.job_states(job_id)
            if len(states) >= tasks and all(v in FINAL_STATES for v in states.values()):
                return states
            time.sleep(2)
        self.run("scancel", job_id)
        raise AssertionError(f"SLURM job {job_id} still queued/running after {timeout} s: "
                             f"{self.run('squeue', '-j', job_id).stdout}")


def slurm_missing_reason() -> str | None:
    """Why the local SLURM cannot start here, or None."""
    for tool in ("slurmctld", "slurmd", "munged", "sbatch"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).is_file():
            return "SLURM not installed"
    return None


def start_local_slurm(base: Path) -> LocalSlurm:
    """Starts munged + slurmctld + slurmd with their files under ``base`` (slurm/local/start.sh)."""
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    env.pop("SLURM_CONF", None)
    proc = subprocess.run([str(LOCAL / "start.sh"), str(base)], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        subprocess.run([str(LOCAL / "stop.sh"), str(base)], env=env, capture_output=True, timeout=60)
        logs = "".join(p.read_text()[-2000:] for p in (base / "log").glob("*.log"))
        raise RuntimeError(f"local SLURM did not start:\n{proc.stdout}\n{proc.stderr}\n{logs}")
    return LocalSlurm(base, {**env, "SLURM_CONF": str(base / "slurm.conf")})


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """The private SLURM of this test session (started on first use, stopped at the end)."""
    reason = slurm_missing_reason()
    if reason:
        pytest.skip(reason)
    base = Path(tmp_path_factory.mktemp("slurm"))
    cluster = start_local_slurm(base)
    yield cluster
    subprocess.run([str(LOCAL / "stop.sh"), str(base)], env=cluster.env, capture_output=True, timeout=120)
