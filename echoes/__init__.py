"""echoes: a DICOM image archive and Modality Worklist server."""

# Our implementation identity lives with the DICOM layer; re-exported here.
from echoes.dicom import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__version__ = "0.1.0"

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "__version__"]
