"""What an admin runs around the server: :mod:`health` (``echoes check``, the
Nagios plugin), :mod:`integrity` (``echoes fsck``/``reindex``), :mod:`daemon`
(the pid file, detaching, "is it answering").
"""
