"""Quiet status polling for the submitit SLURM sweep (``hydra/launcher=submitit_slurm``).

submitit asks ``sacct`` for the state of its jobs on every poll; on a cluster without accounting (no
slurmdbd) every poll printed sacct's "Slurm accounting storage is disabled" and submitit's "Bypassing sacct
error ...". :class:`SacctWarningOnce`, a Hydra callback that the launcher config installs, gives submitit's
SLURM jobs a watcher that says this once, in one line, and then reads the job states from ``scontrol show
job`` instead (the controller knows a job until ``MinJobAge`` after its end; submitit also sees a job finish
through its result file).
"""
from __future__ import annotations

import logging
import re
import subprocess
import time

from hydra.experimental.callback import Callback

__all__ = ["SacctWarningOnce", "SACCT_UNAVAILABLE"]

log = logging.getLogger(__name__)

SACCT_UNAVAILABLE = ("sacct cannot report job states here (SLURM accounting is off: {reason}); following the jobs "
                     "with scontrol instead (said once)")


def scontrol_states(job_ids) -> dict[str, dict[str, str]]:
    """``{job id (array tasks as <id>_<k>): {"State": ..., "NodeList": ...}}`` from ``scontrol -o show job``."""
    info = {}
    for job_id in job_ids:
        proc = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" not in fields:
                continue
            task = fields.get("ArrayTaskId")
            name = f"{fields['ArrayJobId']}_{task}" if task else fields["JobId"]
            info[name] = {"State": fields.get("JobState", "UNKNOWN"), "NodeList": fields.get("NodeList", "")}
    return info


def quiet_watcher(base_cls):
    """A subclass of submitit's ``SlurmInfoWatcher``: sacct while it works; after its first failure one warning
    and ``scontrol`` from then on."""

    class QuietSlurmInfoWatcher(base_cls):
        sacct_works = True

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            if self.sacct_works:
                proc = subprocess.run(command, capture_output=True)
                if proc.returncode == 0:
                    self._info_dict.update(self.read_info(proc.stdout))
                else:
                    self.sacct_works = False
                    reason = proc.stderr.decode(errors="replace").strip().splitlines()
                    log.warning(SACCT_UNAVAILABLE.format(reason=reason[-1] if reason else f"exit {proc.returncode}"))
            if not self.sacct_works:
                self._info_dict.update(scontrol_states({x.split("_")[0] for x in self._registered - self._finished}))
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return QuietSlurmInfoWatcher


class SacctWarningOnce(Callback):
    """Hydra callback: during a multirun, submitit's SLURM jobs are watched by :func:`quiet_watcher`."""

    def on_multirun_start(self, config, **kwargs) -> None:
        from submitit.slurm import slurm as submitit_slurm

        old = submitit_slurm.SlurmJob.watcher
        if not hasattr(old, "sacct_works"):
            submitit_slurm.SlurmJob.watcher = quiet_watcher(type(old))(delay_s=old._delay_s)
