"""Files that must survive a crash: :mod:`durable` (the one fsync and atomic
write helper), :mod:`spool` (where store workers receive and the ingester
picks up; always local), :mod:`objects` (the archive as an object store, one
constructor) over its first backend :mod:`archive` (the study/series tree).
"""
