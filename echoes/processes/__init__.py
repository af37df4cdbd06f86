"""The processes ``echoes start`` runs, as thin shells over the services.

:mod:`supervisor` binds the ports once, starts one child per role, restarts
a child that exits or stops beating its heartbeat. :mod:`worker` is the one
base of every child: signals (SIGTERM stops gracefully, SIGHUP reloads),
process title, logging, heartbeat.  The roles: :mod:`store` and :mod:`mwl`
(a DICOM port each, :mod:`port`), :mod:`ingester` (the index's only writer),
:mod:`sender` (outbound jobs), :mod:`web` (the Browser).
"""
