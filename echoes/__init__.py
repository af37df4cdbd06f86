"""echoes: a DICOM image archive and Modality Worklist server."""

__version__ = "0.1.0"

#: Our implementation identity: in every A-ASSOCIATE-AC and in the File Meta
#: of every object we write.
IMPLEMENTATION_CLASS_UID = "2.25.166084470183616447221916451738052981187"
IMPLEMENTATION_VERSION_NAME = f"ECHOES_{__version__}"[:16]
