"""SOP classes and transfer syntaxes, as data.

The store SCP's SOP class list is read from ``store_scp_sop_classes.tsv`` (here),
a verbatim copy of section 3.1 of the conformance statement, so that the
statement and the code cannot disagree; every other storage SOP class that
pynetdicom knows is added to it from :data:`OTHER_STORAGE_CLASSES` (SPEC:
"and every other storage SOP class pynetdicom knows").  Transfer syntaxes
come from :mod:`echoes.dicom.syntax`, tuples of UIDs in preference order.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from echoes.dicom.syntax import COMPRESSED, UNCOMPRESSED

VERIFICATION = "1.2.840.10008.1.1"
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
#: Modality Performed Procedure Step SOP Class (PS3.4 Annex F), on the MWL port.
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"
#: Storage Commitment Push Model SOP Class and its well-known instance (PS3.4 Annex J).
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_PUSH_INSTANCE = "1.2.840.10008.1.20.1.1"

#: What the store SCP accepts for every storage SOP class: the syntax table's
#: uncompressed syntaxes, then the compressed ones it stores as received.
STORE_TRANSFER_SYNTAXES: tuple[str, ...] = UNCOMPRESSED + COMPRESSED


def _read_table(name: str) -> tuple[tuple[str, str], ...]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            label, uid = line.split("\t")
            rows.append((label.strip(), uid.strip()))
    return tuple(rows)


@cache
def conformance_store_labels() -> dict[str, str]:
    """UID -> the statement's name for it."""
    return {uid: label for label, uid in _read_table("store_scp_sop_classes.tsv")}


@cache
def conformance_store_classes() -> tuple[str, ...]:
    """Storage SOP class UIDs of conformance statement 3.1 (no Verification)."""
    uids = [uid for _label, uid in _read_table("store_scp_sop_classes.tsv")]
    return tuple(dict.fromkeys(uid for uid in uids if uid != VERIFICATION))


@cache
def store_scp_classes() -> tuple[str, ...]:
    """Every storage SOP class the store SCP accepts: the statement's, then the others."""
    known = list(conformance_store_classes())
    known.extend(uid for uid, _keyword in OTHER_STORAGE_CLASSES)
    return tuple(dict.fromkeys(known))


#: The storage SOP classes pynetdicom 3.0 knows that conformance statement 3.1
#: does not list, (UID, keyword) (SPEC: "and every other storage SOP class
#: pynetdicom knows").  A table, so the store's classes do not depend on a
#: library's private list; a test checks pynetdicom knows no class missing here.
OTHER_STORAGE_CLASSES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.2.2", "LegacyConvertedEnhancedCTImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.4.3", "EnhancedMRColorImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.4.4", "LegacyConvertedEnhancedMRImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.6.2", "EnhancedUSVolumeStorage"),
    ("1.2.840.10008.5.1.4.1.1.6.3", "PhotoacousticImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.1.4", "General32bitECGWaveformStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.4.2", "GeneralAudioWaveformStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.5.1", "ArterialPulseWaveformStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.6.1", "RespiratoryWaveformStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.6.2", "MultichannelRespiratoryWaveformStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.7.1", "RoutineScalpElectroencephalogramWaveformStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.7.2", "ElectromyogramWaveformStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.7.3", "ElectrooculogramWaveformStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.7.4", "SleepElectroencephalogramWaveformStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.8.1", "BodyPositionWaveformStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.100.1", "WaveformPresentationStateStorage"),
    ("1.2.840.10008.5.1.4.1.1.9.100.2", "WaveformAcquisitionPresentationStateStorage"),
    ("1.2.840.10008.5.1.4.1.1.11.5", "XAXRFGrayscaleSoftcopyPresentationStateStorage"),
    ("1.2.840.10008.5.1.4.1.1.11.6", "GrayscalePlanarMPRVolumetricPresentationStateStorage"),
    ("1.2.840.10008.5.1.4.1.1.11.7", "CompositingPlanarMPRVolumetricPresentationStateStorage"),
    ("1.2.840.10008.5.1.4.1.1.11.8", "AdvancedBlendingPresentationStateStorage"),
    ("1.2.840.10008.5.1.4.1.1.11.9", "VolumeRenderingVolumetricPresentationStateStorage"),
    ("1.2.840.10008.5.1.4.1.1.11.10", "SegmentedVolumeRenderingVolumetricPresentationStateStorage"),
    ("1.2.840.10008.5.1.4.1.1.11.11", "MultipleVolumeRenderingVolumetricPresentationStateStorage"),
    ("1.2.840.10008.5.1.4.1.1.11.12", "VariableModalityLUTSoftcopyPresentationStageStorage"),
    ("1.2.840.10008.5.1.4.1.1.13.1.1", "XRay3DAngiographicImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.13.1.2", "XRay3DCraniofacialImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.13.1.3", "BreastTomosynthesisImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.13.1.4", "BreastProjectionXRayImageStorageForPresentation"),
    ("1.2.840.10008.5.1.4.1.1.13.1.5", "BreastProjectionXRayImageStorageForProcessing"),
    ("1.2.840.10008.5.1.4.1.1.14.1",
     "IntravascularOpticalCoherenceTomographyImageStorageForPresentation"),
    ("1.2.840.10008.5.1.4.1.1.14.2",
     "IntravascularOpticalCoherenceTomographyImageStorageForProcessing"),
    ("1.2.840.10008.5.1.4.1.1.30", "ParametricMapStorage"),
    ("1.2.840.10008.5.1.4.1.1.66.3", "DeformableSpatialRegistrationStorage"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "SegmentationStorage"),
    ("1.2.840.10008.5.1.4.1.1.66.5", "SurfaceSegmentationStorage"),
    ("1.2.840.10008.5.1.4.1.1.66.6", "TractographyResultsStorage"),
    ("1.2.840.10008.5.1.4.1.1.66.7", "LabelMapSegmentationStorage"),
    ("1.2.840.10008.5.1.4.1.1.66.8", "HeightMapSegmentationStorage"),
    ("1.2.840.10008.5.1.4.1.1.68.1", "SurfaceScanMeshStorage"),
    ("1.2.840.10008.5.1.4.1.1.68.2", "SurfaceScanPointCloudStorage"),
    ("1.2.840.10008.5.1.4.1.1.77.1.5.4", "OphthalmicTomographyImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.77.1.5.5",
     "WideFieldOphthalmicPhotographyStereographicProjectionImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.77.1.5.6", "WideFieldOphthalmicPhotography3DCoordinatesImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.77.1.5.7", "OphthalmicOpticalCoherenceTomographyEnFaceImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.77.1.5.8",
     "OphthlamicOpticalCoherenceTomographyBscanVolumeAnalysisStorage"),
    ("1.2.840.10008.5.1.4.1.1.77.1.6", "VLWholeSlideMicroscopyImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.77.1.7", "DermoscopicPhotographyImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.77.1.8", "ConfocalMicroscopyImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.77.1.9", "ConfocalMicroscopyTiledPyramidalImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.78.1", "LensometryMeasurementsStorage"),
    ("1.2.840.10008.5.1.4.1.1.78.2", "AutorefractionMeasurementsStorage"),
    ("1.2.840.10008.5.1.4.1.1.78.3", "KeratometryMeasurementsStorage"),
    ("1.2.840.10008.5.1.4.1.1.78.4", "SubjectiveRefractionMeasurementsStorage"),
    ("1.2.840.10008.5.1.4.1.1.78.5", "VisualAcuityMeasurementsStorage"),
    ("1.2.840.10008.5.1.4.1.1.78.6", "SpectaclePrescriptionReportStorage"),
    ("1.2.840.10008.5.1.4.1.1.78.7", "OphthalmicAxialMeasurementsStorage"),
    ("1.2.840.10008.5.1.4.1.1.78.8", "IntraocularLensCalculationsStorage"),
    ("1.2.840.10008.5.1.4.1.1.79.1", "MacularGridThicknessAndVolumeReportStorage"),
    ("1.2.840.10008.5.1.4.1.1.80.1", "OphthalmicVisualFieldStaticPerimetryMeasurementsStorage"),
    ("1.2.840.10008.5.1.4.1.1.81.1", "OphthalmicThicknessMapStorage"),
    ("1.2.840.10008.5.1.4.1.1.82.1", "CornealTopographyMapStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.34", "Comprehensive3DSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.35", "ExtensibleSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.68", "RadiopharmaceuticalRadiationDoseSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.69", "ColonCADSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.70", "ImplantationPlanSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.71", "AcquisitionContextSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.72", "SimplifiedAdultEchoSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.73", "PatientRadiationDoseSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.74", "PlannedImagingAgentAdministrationSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.75", "PerformedImagingAgentAdministrationSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.76", "EnhancedXRayRadiationDoseSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.88.77", "WaveformAnnotationSRStorage"),
    ("1.2.840.10008.5.1.4.1.1.90.1", "ContentAssessmentResultsStorage"),
    ("1.2.840.10008.5.1.4.1.1.91.1", "MicroscopyBulkSimpleAnnotationsStorage"),
    ("1.2.840.10008.5.1.4.1.1.104.2", "EncapsulatedCDAStorage"),
    ("1.2.840.10008.5.1.4.1.1.104.3", "EncapsulatedSTLStorage"),
    ("1.2.840.10008.5.1.4.1.1.104.4", "EncapsulatedOBJStorage"),
    ("1.2.840.10008.5.1.4.1.1.104.5", "EncapsulatedMTLStorage"),
    ("1.2.840.10008.5.1.4.1.1.128.1", "LegacyConvertedEnhancedPETImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.130", "EnhancedPETImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.131", "BasicStructuredDisplayStorage"),
    ("1.2.840.10008.5.1.4.1.1.200.2", "CTPerformedProcedureProtocolStorage"),
    ("1.2.840.10008.5.1.4.1.1.200.8", "XAPerformedProcedureProtocolStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.8", "RTIonPlanStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.9", "RTIonBeamsTreatmentRecordStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.10", "RTPhysicianIntentStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.11", "RTSegmentAnnotationStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.12", "RTRadiationSetStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.13", "CArmPhotonElectronRadiationStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.14", "TomotherapeuticRadiationStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.15", "RoboticArmRadiationStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.16", "RTRadiationRecordSetStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.17", "RTRadiationSalvageRecordStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.18", "TomotherapeuticRadiationRecordStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.19", "CArmPhotonElectronRadiationRecordStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.20", "RoboticArmRadiationRecordStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.21", "RTRadiationSetDeliveryInstructionStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.22", "RTTreatmentPreparationStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.23", "EnhancedRTImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.24", "EnhancedContinuousRTImageStorage"),
    ("1.2.840.10008.5.1.4.1.1.481.25", "RTPatientPositionAcquisitionInstructionStorage"),
    ("1.2.840.10008.5.1.4.34.7", "RTBeamsDeliveryInstructionStorage"),
    ("1.2.840.10008.5.1.4.34.10", "RTBrachyApplicationSetupDeliveryInstructionsStorage"),
)
