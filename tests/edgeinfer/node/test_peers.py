"""The real-peer fixtures work: Orthanc answers REST and DICOM, storescu/echoscu talk to it and their
statuses parse, the TLS material authenticates both ways (Python ssl and DCMTK)."""
from __future__ import annotations

import socket
import ssl
import threading

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import peers

pytestmark = pytest.mark.timeout(120)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _phantom_files(folder):
    return sorted(folder.rglob("*.dcm"))


def _write_sr(path, study_uid):
    """A minimal Basic Text SR in ``study_uid`` (what the node will send back, roughly)."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "SR", "PHANTOM", "Phantom^Test"
    ds.SeriesNumber, ds.InstanceNumber = 99, 1
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    concept = pydicom.Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "126000", "DCM", "Imaging Measurement Report"
    ds.ConceptNameCodeSequence = [concept]
    ds.ContinuityOfContent = "SEPARATE"
    item = pydicom.Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "edgeinfer test"
    item.ConceptNameCodeSequence = [concept]
    ds.ContentSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


# --- plain helpers ----------------------------------------------------------------------------------
def test_free_port_is_bindable():
    port = peers.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_require_binary_skips_locally_and_fails_in_ci(monkeypatch):
    name = "no-such-binary-edgeinfer"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install dcmtk orthanc"):
        peers.require_binary(name)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"{name} is not installed; make test installs it"):
        peers.require_binary(name)


def test_parse_store_statuses_verbose_and_debug_output():
    verbose = "\n".join([
        "I: Sending Store Request (MsgID 1, CR)", "XMIT: .........",
        "I: Received Store Response (Success)",
        "I: Received Store Response (Warning: CoercionOfDataElements)",
        "I: Received Store Response (Refused: OutOfResources)",
        "I: Received Store Response (Error: CannotUnderstand)",
        "I: Received Store Response (Refused: SOPClassNotSupported)",
        "I: Received Store Response (Unknown Status: 0xd123)",
    ])
    assert peers.parse_store_statuses(verbose) == [0x0000, 0xB000, 0xA700, 0xC000, 0x0122, 0xD123]
    debug = "\n".join([
        "I: Received Store Response", "D: Message Type                  : C-STORE RSP",
        "D: DIMSE Status                  : 0x0000: Success",
        "I: Received Store Response", "D: Data Set                      : none",
        "D: DIMSE Status                  : 0xc211: Error: Cannot understand",
    ])
    assert peers.parse_store_statuses(debug) == [0x0000, 0xC211]
    assert peers.parse_store_statuses("I: Requesting Association\nF: Association Request Failed") == []
    with pytest.raises(ValueError, match="Made Up"):
        peers.parse_store_statuses("I: Received Store Response (Made Up)")


def test_storescu_statuses_from_a_real_scp(dcmtk, node_phantoms):
    """DCMTK's real output against a pynetdicom SCP answering chosen statuses: names with -v, exact with -d."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    answers = [0x0000, 0xB000, 0xA7FF, 0xC211, 0x0122]
    replies = iter(answers * 2)
    ae = AE(ae_title="SCP")
    ae.supported_contexts = AllStoragePresentationContexts
    port = peers.free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: next(replies))])
    try:
        files = [_phantom_files(node_phantoms)[0]] * len(answers)
        named = peers.storescu("127.0.0.1", port, "SCP", files, extra=("-nh",), timeout=60)
        assert named.returncode == 0, named.stderr[-2000:]
        assert peers.parse_store_statuses(named.stdout + named.stderr) == [0x0000, 0xB000, 0xA700, 0xC000, 0x0122]
        exact = peers.storescu("127.0.0.1", port, "SCP", files, extra=("-nh",), timeout=60, exact_status=True)
        assert peers.parse_store_statuses(exact.stdout + exact.stderr) == answers
    finally:
        scp.shutdown()


def test_storescu_halts_at_the_first_failure_without_no_halt(dcmtk, node_phantoms):
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    replies = iter([0x0000, 0xA700, 0x0000])
    ae = AE(ae_title="SCP")
    ae.supported_contexts = AllStoragePresentationContexts
    port = peers.free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: next(replies))])
    try:
        p = peers.storescu("127.0.0.1", port, "SCP", [_phantom_files(node_phantoms)[0]] * 3, timeout=60)
        assert p.returncode != 0
        assert peers.parse_store_statuses(p.stdout + p.stderr) == [0x0000, 0xA700]
    finally:
        scp.shutdown()


# --- Orthanc ----------------------------------------------------------------------------------------
def test_orthanc_answers_rest(orthanc):
    system = orthanc.rest("/system")
    assert system["DicomAet"] == "PACS" == orthanc.aet
    assert system["DicomPort"] == orthanc.dicom_port and system["HttpPort"] == orthanc.http_port
    assert system["Version"].startswith("1.")
    assert orthanc.studies() == [] and orthanc.study_uids() == []
    assert orthanc.instances("1.2.3.4") == [] and orthanc.srs("1.2.3.4") == []
    with pytest.raises(peers.RestError) as e:
        orthanc.rest("/studies/not-there")
    assert e.value.status == 404


def test_echoscu_to_orthanc(orthanc, dcmtk):
    p = peers.echoscu(orthanc.host, orthanc.dicom_port, orthanc.aet)
    assert p.returncode == 0, p.stderr
    assert "Received Echo Response (Success)" in p.stderr


def test_storescu_sends_phantoms_to_orthanc(orthanc, dcmtk, node_phantoms):
    files = _phantom_files(node_phantoms)
    assert len(files) == 3
    sent = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        sent.setdefault(ds.StudyInstanceUID, set()).add((ds.SOPInstanceUID, ds.SOPClassUID, ds.Modality))

    p = peers.storescu(orthanc.host, orthanc.dicom_port, orthanc.aet, [node_phantoms])  # the folder, labels.csv too
    assert p.returncode == 0, p.stderr[-3000:]
    assert peers.parse_store_statuses(p.stdout + p.stderr) == [0, 0, 0]

    assert sorted(orthanc.study_uids()) == sorted(sent)
    for study_uid, expected in sent.items():
        got = {(i["SOPInstanceUID"], i["SOPClassUID"], i["Modality"]) for i in orthanc.instances(study_uid)}
        assert got == expected
        assert orthanc.srs(study_uid) == []


def test_srs_are_found_and_reset_empties_orthanc(orthanc, dcmtk, node_phantoms, tmp_path):
    study_uid = pydicom.dcmread(_phantom_files(node_phantoms)[0], stop_before_pixels=True).StudyInstanceUID
    sr_uid = _write_sr(tmp_path / "sr.dcm", study_uid)
    p = peers.storescu(orthanc.host, orthanc.dicom_port, orthanc.aet,
                       [_phantom_files(node_phantoms)[0], tmp_path / "sr.dcm"])
    assert peers.parse_store_statuses(p.stdout + p.stderr) == [0, 0], p.stderr[-3000:]

    srs = orthanc.wait_for_srs(study_uid, 1, timeout=10)
    assert [s["SOPInstanceUID"] for s in srs] == [sr_uid]
    assert srs[0]["SOPClassUID"] == BASIC_TEXT_SR and srs[0]["ContentSequence"][0]["TextValue"] == "edgeinfer test"
    (tmp_path / "back.dcm").write_bytes(orthanc.instance_file(srs[0]["OrthancId"]))
    assert pydicom.dcmread(tmp_path / "back.dcm").SOPInstanceUID == sr_uid
    with pytest.raises(AssertionError, match="timed out"):
        orthanc.wait_for_srs(study_uid, 2, timeout=0.5)

    orthanc.reset()
    assert orthanc.studies() == [] and orthanc.srs(study_uid) == []


def test_orthanc_start_failure_reports_its_log(orthanc, tmp_path):
    # the shared Orthanc's DICOM port is taken: a second Orthanc on it must fail, quoting its log
    with pytest.raises(pytest.fail.Exception, match="already in use"):
        peers.Orthanc.start(tmp_path / "clash", extra_config={"DicomPort": orthanc.dicom_port}, attempts=1, timeout=10)


# --- TLS --------------------------------------------------------------------------------------------
def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext):
    """One TLS connection over 127.0.0.1; returns (server outcome, client outcome): the peer cert's
    subject / a received byte, or the exception."""
    result = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve():
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    result["server"] = dict(x[0] for x in tls.getpeercert()["subject"])
                    tls.sendall(b"k")
            except Exception as e:  # noqa: BLE001 - the outcome under test
                result["server"] = e

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    data = tls.recv(1)  # TLS 1.3: a refused client cert shows here, after the handshake
                    result["client"] = data if data else ConnectionError("closed without data")
        except Exception as e:  # noqa: BLE001
            result["client"] = e
        t.join(10)
    return result["server"], result["client"]


def test_tls_material_mutual_auth_with_python_ssl(tls_material):
    server, client = _handshake(tls_material.server_context(), tls_material.client_context("client"))
    assert server["commonName"] == "MODALITY" and client == b"k"

    for who in ("rogue", "none"):
        server, client = _handshake(tls_material.server_context(), tls_material.client_context(who))
        assert isinstance(server, ssl.SSLError), (who, server)
        assert isinstance(client, (ssl.SSLError, ConnectionError, OSError)), (who, client)

    # and the client checks the server: a CA that did not sign it is refused
    rogue_trust = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    rogue_trust.load_verify_locations(tls_material.rogue_ca_cert)
    _, client = _handshake(tls_material.server_context(require_client_cert=False), rogue_trust)
    assert isinstance(client, ssl.SSLCertVerificationError)


def test_dcmtk_tls_against_an_orthanc_with_dicom_tls(orthanc_factory, tls_material, dcmtk, node_phantoms):
    peers.require_dcmtk_tls()
    pacs = orthanc_factory(tls=tls_material)
    ok = peers.echoscu(pacs.host, pacs.dicom_port, pacs.aet, extra=peers.dcmtk_tls_args(tls_material))
    assert ok.returncode == 0, ok.stderr
    for who in ("rogue", "none"):
        bad = peers.echoscu(pacs.host, pacs.dicom_port, pacs.aet, extra=peers.dcmtk_tls_args(tls_material, who))
        assert bad.returncode != 0, who
    plain = peers.echoscu(pacs.host, pacs.dicom_port, pacs.aet)
    assert plain.returncode != 0

    p = peers.storescu(pacs.host, pacs.dicom_port, pacs.aet, [node_phantoms], extra=peers.dcmtk_tls_args(tls_material))
    assert peers.parse_store_statuses(p.stdout + p.stderr) == [0, 0, 0], p.stderr[-3000:]
    assert len(pacs.study_uids()) == len({pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID
                                          for f in _phantom_files(node_phantoms)})
