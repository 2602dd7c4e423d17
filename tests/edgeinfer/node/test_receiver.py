"""What the receiver acknowledges is never destroyed, and what it keeps is private: a real node, pynetdicom
as the modality (it sends the exact data sets each case needs)."""
from __future__ import annotations

import copy
import stat
import warnings

import pydicom
import pytest

from edgeinfer.node.status import Status
from peers import NODE_AET, wait_until


def _send(node, items) -> list[int]:
    """C-STORE each data set or Part 10 file over one association (pynetdicom as the modality); the statuses."""
    from pynetdicom import AE
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ae = AE(ae_title="MODALITY")
    contexts: dict[str, set] = {}
    for i in items:
        ds = i if isinstance(i, pydicom.Dataset) else pydicom.dcmread(i, stop_before_pixels=True)
        contexts.setdefault(str(ds.SOPClassUID), {ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                                  DeflatedExplicitVRLittleEndian}).add(str(ds.file_meta.TransferSyntaxUID))
    for cls, syntaxes in contexts.items():
        ae.add_requested_context(cls, sorted(syntaxes))
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(i).Status) for i in items]
    finally:
        assoc.release()


def _instances(node) -> list:
    return sorted((node.spool / "instances").rglob("*.dcm"))


def test_a_reused_sop_instance_uid_never_replaces_what_was_acknowledged(node_factory, node_phantoms):
    node = node_factory("--quiet-seconds", "600")  # nothing is scored meanwhile: only the receiver acts
    src = pydicom.dcmread(sorted(node_phantoms.rglob("*.dcm"))[0])
    other_study = copy.deepcopy(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other_study.StudyInstanceUID = pydicom.uid.generate_uid()
    other_pixels = copy.deepcopy(src)
    arr = other_pixels.pixel_array.copy()
    arr[:8, :8] = arr.max()
    other_pixels.PixelData = arr.tobytes()

    assert _send(node, [src]) == [0x0000]
    (stored,) = _instances(node)
    acknowledged = stored.read_bytes()
    # the same SOP Instance UID naming another study, then with other pixels: refused, nothing changes
    assert _send(node, [other_study, other_pixels]) == [Status.CONFLICT] * 2
    assert _instances(node) == [stored] and stored.read_bytes() == acknowledged
    # the same bytes again: a duplicate, Success, and still one file
    assert _send(node, [src]) == [0x0000]
    assert _instances(node) == [stored] and stored.read_bytes() == acknowledged
    code, wl = node.get("/readyz")
    assert code == 200
    _, metrics = node.get("/metrics")
    assert 'edgeinfer_instances_total{outcome="conflict"} 2.0' in metrics
    assert 'edgeinfer_instances_total{outcome="duplicate"} 1.0' in metrics
    assert 'edgeinfer_instances_total{outcome="stored"} 1.0' in metrics
    assert 'edgeinfer_studies_in_state{state="receiving"} 1.0' in metrics   # study C was never created
    log = node.log.read_text()
    assert "0xC212" in log and str(src.SOPInstanceUID) in log
    assert str(src.PatientName) not in log and str(src.PatientID) not in log


def test_the_spool_and_the_state_are_readable_by_the_nodes_user_only(node_factory, node_phantoms):
    node = node_factory("--quiet-seconds", "600")
    src = pydicom.dcmread(sorted(node_phantoms.rglob("*.dcm"))[0])
    assert _send(node, [src]) == [0x0000]
    wait_until(lambda: (node.spool / "state.sqlite3-wal").exists(), 10, 0.1, "the state's WAL file")
    for p in node.spool.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p.relative_to(node.spool), oct(mode))
    assert stat.S_IMODE(node.spool.stat().st_mode) == 0o700


def _three_studies(node_phantoms):
    files = sorted(node_phantoms.rglob("*.dcm"))
    studies = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files})
    return files, studies


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_the_spool_is_the_source_of_truth_when_the_state_database_is_lost(node_factory, orthanc, dcmtk,
                                                                        node_phantoms, damage):
    files, studies = _three_studies(node_phantoms)
    node = node_factory("--quiet-seconds", "600", name="first")    # acknowledged, not scored yet
    assert node.store(files).returncode == 0
    node.stop()
    db = node.spool / "state.sqlite3"
    for f in node.spool.glob("state.sqlite3*"):
        f.unlink()
    if damage == "corrupt":
        db.write_bytes(b"this is not an SQLite database, " * 64)
    again = node_factory("--spool", str(node.spool), "--quiet-seconds", "1",
                         "--send-to", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", name="second")
    for uid in studies:                                            # every acknowledged study is scored and reported
        assert len(orthanc.wait_for_srs(uid, 1, timeout=60)) == 1
    code, ready = again.get("/readyz")
    assert code == 200 and ready["status"] == "ready"
    notes = " ".join(ready["notes"])
    assert f"{len(files)} instance(s) of {len(studies)} study(ies)" in notes
    log = again.log.read_text()
    assert "registered again from their headers" in log
    if damage == "corrupt":
        assert "could not be read" in notes and list(node.spool.glob("state.sqlite3.unreadable-*"))
    _, wl = again.get("/worklist")
    assert sorted(s["study_uid"] for s in wl["studies"]) == studies


def _deflate_bomb(src: pydicom.Dataset, path, zeros: int) -> None:
    """A Part 10 file in Deflated Explicit VR Little Endian whose data set inflates to ``zeros`` bytes of pixel
    data after its header (about 1 MB on disk per GB inflated)."""
    import io
    import struct
    import zlib

    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    ds = copy.deepcopy(src)
    del ds.PixelData
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = io.BytesIO()
    pydicom.filewriter.write_dataset(pydicom.filebase.DicomFileLike(body), ds)  # explicit VR LE (the file's TS)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [comp.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, zeros))]
    chunk = bytes(1 << 24)
    for _ in range(zeros // len(chunk)):
        out.append(comp.compress(chunk))
    out.append(comp.flush())
    meta = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(pydicom.filebase.DicomFileLike(meta), ds.file_meta)
    path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + b"".join(out))


def test_deflate_bombs_cost_the_receiver_megabytes_not_gigabytes(node_factory, node_phantoms, tmp_path):
    import threading

    from pynetdicom import AE
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    node = node_factory("--quiet-seconds", "600")
    src = pydicom.dcmread(sorted(node_phantoms.rglob("*.dcm"))[0])
    bombs = []
    for i in range(10):
        bombs.append(tmp_path / f"bomb{i}.dcm")
        # 96 MiB of zeros each (pynetdicom, the sender here, inflates and deflates what it sends, so the
        # bombs stay small enough for this process; ten at once still cost a whole-inflating receiver a GB)
        _deflate_bomb(src, bombs[-1], zeros=96 << 20)
    assert all(b.stat().st_size < 1 << 20 for b in bombs)
    statuses: list = []

    def send(path):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(src.SOPClassUID, DeflatedExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        statuses.append(int(assoc.send_c_store(path).Status) if assoc.is_established else None)
        assoc.release()

    threads = [threading.Thread(target=send, args=(b,)) for b in bombs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(statuses) == [0x0000] * 10               # their headers are read; their pixels never inflated
    peak_kb = int(next(line.split()[1] for line in open(f"/proc/{node.proc.pid}/status")
                       if line.startswith("VmHWM")))
    assert peak_kb < 600 * 1024, f"the node peaked at {peak_kb // 1024} MB"
    assert node.get("/healthz")[0] == 200
