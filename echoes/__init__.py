"""echoes: a DICOM image archive and Modality Worklist server."""

__version__ = "0.1.0"
