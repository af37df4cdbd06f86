"""echoes' DICOM layer: PDUs, DIMSE messages, data set bytes, associations.

Nothing here imports the rest of echoes: settings come in as plain values
(built from the configuration by :mod:`echoes.services.dicom_settings`), so
this package can be read, tested and reasoned about as a DICOM library.
"""

#: Our implementation identity: in every A-ASSOCIATE-RQ/AC and in the File
#: Meta of every object we write.
IMPLEMENTATION_CLASS_UID = "2.25.166084470183616447221916451738052981187"
#: ``ECHOES_<version>``, at most 16 characters; a unit test keeps it equal to
#: ``echoes.__version__`` (the version lives outside this package).
IMPLEMENTATION_VERSION_NAME = "ECHOES_0.1.0"
