"""The Hydra submitit SLURM launcher (``hydra/launcher=submitit_slurm``) with quiet status polling.

submitit asks ``sacct`` for the state of its jobs on every poll; on a cluster without accounting (no
slurmdbd) every poll logs "Bypassing sacct error ...". :class:`SlurmLauncher` says it once, in one line, and
submitit carries on as before (it sees a job finish when the job writes its result file).
"""
from __future__ import annotations

import logging

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher

__all__ = ["SlurmLauncher", "SacctWarningOnce"]

SACCT_UNAVAILABLE = ("sacct cannot report job states here (SLURM accounting is off): the sweep follows its jobs "
                     "through their result files instead (said once)")


class SacctWarningOnce(logging.Filter):
    """Lets the first of submitit's "Bypassing sacct error" warnings through as one plain line, drops the rest."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg, record.args = SACCT_UNAVAILABLE, ()
        return True


class SlurmLauncher(_SubmititSlurmLauncher):
    """hydra-submitit-launcher's SlurmLauncher, stating an unavailable ``sacct`` once instead of on every poll."""

    def launch(self, job_overrides, initial_job_idx):
        submitit_log = logging.getLogger("submitit")
        once = SacctWarningOnce()
        submitit_log.addFilter(once)
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit_log.removeFilter(once)
