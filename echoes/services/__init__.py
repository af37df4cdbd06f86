"""What echoes does with DICOM messages, between the DICOM layer and the processes.

Each service plugs into :mod:`echoes.dicom` through its one interface
(:mod:`echoes.dicom.service`): :mod:`verification` (C-ECHO),
:mod:`storage` (C-STORE into the spool, acknowledged after fsync),
:mod:`worklist` (Modality Worklist C-FIND from the worklist folder); and
:mod:`outbound` is the sender's pure logic (which jobs go together, which
syntax an object travels in, how it is converted).  :mod:`dicom_settings` is
the one place the configuration becomes the DICOM layer's plain settings.
Services never import :mod:`echoes.processes`: a process runs a service, not
the other way round.
"""
