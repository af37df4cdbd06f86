"""The ``mwl`` role: the Modality Worklist SCP process.

What it answers is :mod:`echoes.services.worklist`'s; this shell reads the
worklist folder at start, keeps it current (a watcher, and SIGHUP re-reads it
whole) and serves the port (:class:`DicomPort`).
"""

from __future__ import annotations

import logging

from echoes.config import Config
from echoes.processes.port import DicomPort
from echoes.services.worklist import RECEIVE_MAX_PDU, WorklistService, load_directory
from echoes.worklist import files as worklist

log = logging.getLogger("echoes.mwl")


class MwlWorker(DicomPort):
    """Answers Modality Worklist C-FIND from the in-memory worklist."""

    role = "mwl"
    maximum_length = RECEIVE_MAX_PDU

    def service(self) -> WorklistService:
        directory = load_directory(self.config)
        self.watcher = worklist.WorklistWatcher(directory)
        self.watcher.start()
        self.directory = directory
        return WorklistService(directory)

    def reconfigure(self, _fresh: Config) -> None:
        self.directory.load()
        log.info("worklist re-read on SIGHUP: %d items", len(self.directory))

    def closed(self) -> None:
        self.watcher.stop()


def run(config: Config, listen_fd: int = -1) -> int:
    """Serve Modality Worklist on ``listen_fd`` until SIGTERM."""
    return MwlWorker(config, listen_fd).main()
