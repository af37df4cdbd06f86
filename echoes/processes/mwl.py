"""The ``mwl`` role: the Modality Worklist SCP process.

What it answers is :mod:`echoes.services.worklist`'s; this shell reads the
worklist folder at start, keeps it current (a watcher, and SIGHUP re-reads it
whole) and serves the port (:class:`DicomPort`).
"""

from __future__ import annotations

import logging

from echoes.config import Config
from echoes.dicom.service import Port
from echoes.processes.port import DicomPort
from echoes.services.mpps import MppsService, MppsStore
from echoes.services.worklist import RECEIVE_MAX_PDU, WorklistService, load_directory
from echoes.worklist import files as worklist
from echoes.worklist.performed import Performed

log = logging.getLogger("echoes.mwl")


class MwlWorker(DicomPort):
    """Answers Modality Worklist C-FIND from the in-memory worklist, and MPPS."""

    role = "mwl"
    maximum_length = RECEIVE_MAX_PDU

    def service(self) -> Port:
        directory = load_directory(self.config)
        self.watcher = worklist.WorklistWatcher(directory)
        self.watcher.start()
        self.directory = directory
        # MPPS on the same AE (issue 20): the worklist hides what it performed.
        self.mpps = MppsStore(self.config.mpps_dir)
        self.mpps.load()
        self.worklist = WorklistService(directory, self.performed_steps)
        return Port(self.worklist, MppsService(self.mpps))

    def performed_steps(self) -> Performed:
        """What the worklist hides now: nothing when worklist_hide_performed = no."""
        return self.mpps.hidden if self.config.worklist_hide_performed else frozenset()

    def reconfigure(self, _fresh: Config) -> None:
        # self.config is fresh already: worklist_hide_performed applies to the next query.
        self.directory.load()
        self.mpps.load()
        log.info("worklist re-read on SIGHUP: %d items", len(self.directory))

    def closed(self) -> None:
        self.watcher.stop()


def run(config: Config, listen_fd: int = -1) -> int:
    """Serve Modality Worklist on ``listen_fd`` until SIGTERM."""
    return MwlWorker(config, listen_fd).main()
