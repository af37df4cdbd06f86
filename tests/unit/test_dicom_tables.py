"""The tables of echoes.dicom (transfer syntaxes, DIMSE messages, storage classes),
checked against pydicom's and pynetdicom's own (independent) knowledge."""

from __future__ import annotations

import io

import pytest
from pydicom import uid as pydicom_uid
from pydicom.filereader import read_dataset
from pynetdicom import sop_class
from pynetdicom.service_class import StorageServiceClass

from echoes.dicom import dataset, dimse, sopclasses, syntax


def test_syntax_table_agrees_with_pydicom() -> None:
    for ts in syntax.TABLE:
        known = pydicom_uid.UID(ts.uid)
        assert known.name == ts.name
        if ts.accepted:  # 1.2.840.10008.1.2.8.1 is read as deflated, as echoes always has
            assert known.is_implicit_VR == ts.implicit, ts.name
            assert known.is_little_endian == ts.little_endian, ts.name
            assert known.is_deflated == ts.deflated, ts.name
            assert known.is_encapsulated == ts.encapsulated, ts.name


def test_syntax_lists() -> None:
    assert syntax.UNCOMPRESSED == (syntax.EXPLICIT_VR_LITTLE_ENDIAN,
                                   syntax.IMPLICIT_VR_LITTLE_ENDIAN, syntax.EXPLICIT_VR_BIG_ENDIAN)
    assert syntax.COMPRESSED[0] == syntax.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    assert len(syntax.COMPRESSED) == 13
    assert syntax.DEFLATED == {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}
    assert syntax.ENCAPSULATED == frozenset(syntax.COMPRESSED) - syntax.DEFLATED
    assert syntax.encoding_of("1.2.3.4") == (False, True)  # unknown: explicit VR LE


def test_store_accepts_every_storage_class_pynetdicom_knows() -> None:
    known = {str(value) for value in vars(sop_class).values()
             if isinstance(value, sop_class.SOPClass)
             and value.service_class is StorageServiceClass}
    assert known <= set(sopclasses.store_scp_classes())
    assert len(set(sopclasses.store_scp_classes())) == len(sopclasses.store_scp_classes())


def test_every_message_element_is_known() -> None:
    for command_field, (name, elements) in dimse.MESSAGES.items():
        assert dimse.COMMAND_FIELD in elements, name
        assert elements <= dimse.ELEMENTS.keys(), name
        assert bool(command_field & dimse.RESPONSE_BIT) == name.endswith("-RSP")


@pytest.mark.parametrize("command_field", sorted(dimse.MESSAGES))
def test_message_reads_back_with_pydicom(command_field: int) -> None:
    name, allowed = dimse.MESSAGES[command_field]
    samples = {"AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "RequestedSOPClassUID":
               "1.2.840.10008.5.1.4.1.1.2", "MessageID": 7, "MessageIDBeingRespondedTo": 7,
               "MoveDestination": "DEST", "Priority": 0, "Status": 0xA900,
               "ErrorComment": "odd", "AffectedSOPInstanceUID": "1.2.3",
               "RequestedSOPInstanceUID": "1.2.3", "EventTypeID": 1, "ActionTypeID": 2,
               "NumberOfRemainingSuboperations": 3, "MoveOriginatorMessageID": 4,
               "MoveOriginatorApplicationEntityTitle": "MOVER"}
    values = {keyword: value for element, (keyword, _vr) in dimse.ELEMENTS.items()
              if element in allowed and (value := samples.get(keyword)) is not None}
    data = dimse.message(command_field, **values)
    read = read_dataset(io.BytesIO(data), True, True)
    assert read.CommandGroupLength == len(data) - 12
    assert read.CommandField == command_field, name
    assert read.CommandDataSetType == dimse.NO_DATA_SET
    for keyword, value in values.items():
        assert read[keyword].value == value, keyword
    parsed = dimse.parse_command(data)
    assert dimse.command_us(parsed, dimse.COMMAND_FIELD) == command_field


def test_message_refuses_an_element_it_does_not_carry() -> None:
    with pytest.raises(ValueError, match="C-ECHO-RQ has no MoveDestination"):
        dimse.message(dimse.C_ECHO_RQ, MoveDestination="X")


def test_helpers_equal_the_table_built_messages() -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assert dimse.echo_request_command(ct, 3) == dimse.message(
        dimse.C_ECHO_RQ, AffectedSOPClassUID=ct, MessageID=3)
    assert dimse.store_request_command(ct, "1.2.3", 4) == dimse.message(
        dimse.C_STORE_RQ, AffectedSOPClassUID=ct, MessageID=4, Priority=0,
        CommandDataSetType=dimse.DATA_SET_PRESENT, AffectedSOPInstanceUID="1.2.3")


def test_encode_and_decode_dataset_round_trip() -> None:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.Rows = 16
    for implicit, little in (syntax.encoding_of(uid) for uid in syntax.UNCOMPRESSED):
        data = dataset.encode_dataset(ds, implicit, little)
        back = dataset.decode_dataset(data, implicit, little)
        assert back.PatientName == "Doe^Jane" and back.Rows == 16
