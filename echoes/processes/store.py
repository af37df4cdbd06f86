"""The ``store`` role: a store SCP worker process (``store_workers`` of them share the port).

What it does with an object is :mod:`echoes.services.storage`'s; Query/Retrieve
shares the port: a query is :mod:`echoes.services.query`'s (C-FIND), a
retrieve :mod:`echoes.services.retrieve`'s (C-MOVE, C-GET); this shell
makes the worker's spool folder, serves the port (:class:`DicomPort`) and,
after the last association, removes what it leaves behind.
"""

from __future__ import annotations

import os

from echoes.config import Config
from echoes.dicom.service import Port
from echoes.processes.port import DicomPort
from echoes.services.commitment import CommitmentService, Committer
from echoes.services.query import QueryService
from echoes.services.retrieve import RetrieveService
from echoes.services.storage import RECEIVE_MAX_PDU, StoreService
from echoes.storage import spool
from echoes.storage.objects import open_object_store


class StoreWorker(DicomPort):
    """Receives C-STORE into ``spool/tmp/<pid>/`` and publishes into ``spool/incoming``."""

    role = "store"
    maximum_length = RECEIVE_MAX_PDU

    def service(self) -> Port:
        config = self.config
        layout = spool.SpoolLayout(config.spool_dir)
        layout.create()
        spool.remove_dead_worker_tmp(layout)
        folder = layout.worker_tmp(os.getpid())
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.store = StoreService(config, layout, folder)
        # -- Query/Retrieve on the store port, next to storage (issue 17) --
        self.query = QueryService(config)  # C-FIND, Patient and Study Root
        self.retrieve = RetrieveService(config, self.query.index)  # C-MOVE, C-GET
        # -- Storage Commitment on the store AE (issue 20): reports once indexed --
        self.committer = Committer(config, self.query.index, open_object_store(config))
        self.spawn(self.committer.run, "commitment")
        return Port(self.store, self.query, self.retrieve, CommitmentService(self.committer))

    def reconfigure(self, fresh: Config) -> None:
        self.store.config = fresh  # min_free_mb, for the objects received from now on
        self.query.config = fresh  # qr_allowed_calling_aes, ae_title (Q/R, issue 17)
        self.retrieve.config = fresh  # [ae:*] move destinations, qr_allowed_calling_aes
        self.committer.config = fresh  # [ae:*] report destinations, retry_interval

    def closed(self) -> None:
        self.committer.stop()
        self.store.spares.close()
        for leftover in self.folder.glob("*.part"):
            leftover.unlink(missing_ok=True)


def run(config: Config, listen_fd: int = -1) -> int:
    """Serve associations on ``listen_fd`` until SIGTERM; return the exit code."""
    return StoreWorker(config, listen_fd).main()
