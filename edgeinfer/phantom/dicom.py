"""The DICOM writer: device profiles, UIDs, header contents, VOI/rescale, pixel encoding.

Every image is a complete dataset (file meta included), Explicit VR Little Endian or RLE
Lossless, stored as a DX (Digital X-Ray Image Storage - For Presentation) or CR (Computed
Radiography Image Storage) object. UIDs are hashes of seed-derived tokens, so the same seed
gives the same UIDs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage

_UID_NAMESPACE = "edgeinfer-phantom-v1"


# ------------------------------------------------------------------------------------------
# devices and header variety
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Profile:
    manufacturer: str
    model: str
    modality: str
    rows: int
    cols: int
    spacing: float  # mm
    software: str
    weight: float


_PROFILES = (
    _Profile("Aurora Imaging", "Lumen DR43", "DX", 3000, 3000, 0.143, "LumenOS 4.2.1", 3),
    _Profile("Aurora Imaging", "Lumen DR35", "DX", 2500, 2500, 0.140, "LumenOS 4.2.1", 1),
    _Profile("Nordlicht Medical", "ND-4335 Flat", "DX", 2500, 2048, 0.170, "NDX 7.0", 3),
    _Profile("Nordlicht Medical", "ND-4335 Flat", "DX", 2048, 2500, 0.170, "NDX 7.0", 1),
    _Profile("Kestrel Radiology", "KX Mobile 43", "DX", 2816, 2304, 0.150, "KX 2.11", 2),
    _Profile("Kestrel Radiology", "KX Mobile 43 export", "DX", 1024, 840, 0.412, "KX 2.11", 1),
    _Profile("Tamarind Systems", "TR-CR 2", "CR", 2140, 1760, 0.200, "TRC 3.3", 3),
    _Profile("Tamarind Systems", "TR-CR 2", "CR", 1760, 1760, 0.200, "TRC 3.3", 1),
    _Profile("Halcyon X-Ray", "HX-CR Plus", "CR", 2370, 1950, 0.180, "HX 1.9.4", 2),
    _Profile("Halcyon X-Ray", "HX-CR Plus web", "CR", 640, 528, 0.667, "HX 1.9.4", 1),
)
_INSTITUTIONS = ("Phantom General Hospital", "Synthetic Valley Clinic", "Test Harbour Medical Centre")
_VOI_STYLES = ("none", "window", "multiwindow", "rescale", "window+rescale", "multiwindow+rescale")


def _ds(v: float, digits: int = 6) -> str:
    """A DS string of at most 16 characters."""
    s = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _uid(token: str, *parts: Any) -> str:
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, token, *map(str, parts)]))


def file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    """The file meta of a phantom instance (Explicit VR Little Endian; a compressor changes the syntax)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    return meta


def _window_values(pixels: np.ndarray, dev: dict, img: dict) -> list[tuple[float, float, str]]:
    sub = pixels[:: max(1, pixels.shape[0] // 256), :: max(1, pixels.shape[1] // 256)].astype(np.float64)
    if dev["photometric"] == "MONOCHROME1":
        body = sub[sub < dev["lo"] + 0.9 * (dev["hi"] - dev["lo"])]
    else:
        body = sub[sub > dev["lo"] + 0.1 * (dev["hi"] - dev["lo"])]
    if body.size < 16:
        body = sub.ravel()
    p_lo, p_hi = np.percentile(body, [1.0, 99.5])
    slope, intercept = dev["rescale"] or (1.0, 0.0)
    lo_m, hi_m = p_lo * slope + intercept, p_hi * slope + intercept
    jc, jw = img["ww_jitter"]
    c = (lo_m + hi_m) / 2 * jc if abs(lo_m + hi_m) > 1 else (lo_m + hi_m) / 2
    w = max(2.0, (hi_m - lo_m) * jw * 1.05)
    out = [(c, w, "NORMAL")]
    if dev["voi"].startswith("multiwindow"):
        out.append((c + 0.1 * w, 0.7 * w, "HARDER"))
        out.append((c - 0.05 * w, 1.4 * w, "SOFTER"))
    return out


def _dataset(*, dev, img, pixels, rows, cols, spacing, sex, age, birth, index, study_date, study_time, when,
             accession, body_part, institution, both_spacings, study_uid, series_uid, sop_uid, series_number,
             instance, repeat, token, series_when=None) -> Dataset:
    prof: _Profile = dev["profile"]
    modality = dev["modality"]
    sop_class = DX_SOP_CLASS if modality == "DX" else CR_SOP_CLASS
    view = dev["view"]

    ds = Dataset()
    ds.file_meta = file_meta(sop_class, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date.strftime("%Y%m%d")
    series_when = series_when or when  # series attributes are the same for every image of a series (dcentvfy)
    ds.SeriesDate = series_when.strftime("%Y%m%d")
    ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = study_time.strftime("%H%M%S")
    ds.SeriesTime = series_when.strftime("%H%M%S")
    ds.AcquisitionTime = when.strftime("%H%M%S")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = accession
    ds.Modality = modality
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = prof.manufacturer
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = ""
    ds.StationName = f"{prof.manufacturer.split()[0].upper()[:8]}{index % 7 + 1:02d}"
    ds.StudyDescription = "XR CHEST 1 VIEW" if view == "PA" else "XR CHEST PORTABLE"
    ds.SeriesDescription = f"Thorax {view}" + (" repeat" if repeat else "")
    ds.ManufacturerModelName = prof.model
    ds.PatientName = f"PHANTOM^{index:04d}"
    ds.PatientID = f"PHANTOM-{index:04d}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    if body_part:
        ds.BodyPartExamined = "CHEST"
    ds.KVP = _ds(round(img["kvp"]))
    ds.DistanceSourceToDetector = "1800" if view == "PA" else "1000"
    ds.ExposureTime = str(int(5 + 20 * img["mas"]))
    ds.XRayTubeCurrent = str(int(200 + 100 * img["mas"]))
    ds.Exposure = str(int(round(img["mas"])))
    ds.ImagerPixelSpacing = [_ds(spacing), _ds(spacing)]
    if both_spacings:
        ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.DeviceSerialNumber = f"SN{int(token[:6], 16) % 99991:05d}"
    ds.SoftwareVersions = prof.software
    ds.ViewPosition = view
    if modality == "DX":
        ds.DetectorType = "SCINTILLATOR"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = accession[-6:]
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = dev["photometric"]
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = dev["bits"]
    ds.HighBit = dev["bits"] - 1
    ds.PixelRepresentation = 0
    if modality == "DX":
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if dev["photometric"] == "MONOCHROME2" else 1
    voi = dev["voi"]
    if "window" in voi:
        wins = _window_values(pixels, dev, img)
        if len(wins) == 1:
            ds.WindowCenter = _ds(round(wins[0][0], 1))
            ds.WindowWidth = _ds(round(wins[0][1], 1))
        else:
            ds.WindowCenter = [_ds(round(c, 1)) for c, _w, _e in wins]
            ds.WindowWidth = [_ds(round(w, 1)) for _c, w, _e in wins]
            ds.WindowCenterWidthExplanation = [e for _c, _w, e in wins]
    if dev["rescale"] is not None:
        ds.RescaleIntercept = _ds(dev["rescale"][1])
        ds.RescaleSlope = _ds(dev["rescale"][0])
        ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    if modality == "DX":
        ds.BurnedInAnnotation = "NO"
        ds.PresentationLUTShape = "IDENTITY" if dev["photometric"] == "MONOCHROME2" else "INVERSE"
    if dev["compress"]:
        compress(ds, RLELossless, pixels)
    else:
        ds.PixelData = pixels.astype("<u2", copy=False).tobytes()
        ds["PixelData"].VR = "OW"
    return ds


#: High-Throughput JPEG 2000: lossless, lossless with RPCL options, and the lossy one (here a lossless codestream)
HTJ2K = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")


def compress(ds: Dataset, ts: str, pixels: np.ndarray, **kw) -> None:
    """Encode ``pixels`` (stored values, as ``ds`` describes them) into ``ds`` in transfer syntax ``ts``.

    pydicom's encoders where it has one (RLE, JPEG-LS, JPEG 2000; ``kw`` goes to them: the lossy
    variants take ``jls_error``, default 2, and ``j2k_cr`` or ``j2k_psnr``, default a 10:1 ratio);
    imagecodecs' for lossless and lossy JPEG and for High-Throughput JPEG 2000, which pydicom cannot
    write (grey JPEG images only; signed
    values are stored as their bit patterns). Lossy JPEG holds 8 bits (baseline) or 12 (extended),
    quality ``jpeg_quality`` (default 90): stored values with more bits are shifted right, and the
    Rescale Slope is multiplied to match, so modality values and window presets keep their meaning
    (what an archive's lossy conversion does; refused with a Modality LUT Sequence or pixel padding).
    """
    from pydicom.encaps import encapsulate
    from pydicom.uid import (JPEG2000, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
                             JPEGLSNearLossless)

    if ts in (JPEGLossless, JPEGLosslessSV1, JPEGBaseline8Bit, JPEGExtended12Bit):
        import imagecodecs

        if pixels.ndim != 2:
            raise ValueError("JPEG is written for grey images only")
        lossy = ts in (JPEGBaseline8Bit, JPEGExtended12Bit)
        if lossy:  # extended JPEG holds 8 bits too (process 2)
            precision = 8 if ts == JPEGBaseline8Bit or int(ds.BitsStored) <= 8 else 12
            pixels = _to_precision(ds, pixels, precision)
        bits = int(ds.BitsStored)
        patterns = pixels.view(f"u{pixels.dtype.itemsize}") & ((1 << bits) - 1)
        if lossy:
            frame = imagecodecs.jpeg8_encode(patterns, level=kw.get("jpeg_quality", 90), bitspersample=precision)
            ds.LossyImageCompression = "01"
        else:
            frame = imagecodecs.ljpeg_encode(patterns, bitspersample=bits)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
        return
    if ts in HTJ2K:  # pydicom writes no High-Throughput JPEG 2000; imagecodecs (OpenJPH) does, lossless
        import imagecodecs

        ds.PixelData = encapsulate([imagecodecs.htj2k_encode(pixels)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
        return
    if ts == RLELossless:
        kw.setdefault("encoding_plugin", _rle_plugin())
    elif ts == JPEGLSNearLossless and "jls_error" not in kw:
        kw["jls_error"] = 2           # each value within 2 of the original
    elif ts == JPEG2000 and not {"j2k_cr", "j2k_psnr"} & set(kw):
        kw["j2k_cr"] = [10]           # 10:1, a common lossy setting
    ds.compress(ts, pixels, generate_instance_uid=False, **kw)


def _to_precision(ds: Dataset, pixels: np.ndarray, precision: int) -> np.ndarray:
    """``pixels`` with at most ``precision`` bits stored, ``ds`` described to match (see :func:`compress`)."""
    shift = int(ds.BitsStored) - precision
    if shift > 0:
        if "ModalityLUTSequence" in ds or "PixelPaddingValue" in ds:
            raise ValueError(f"cannot bring {ds.BitsStored} stored bits to {precision}: the image has a "
                             "Modality LUT Sequence or pixel padding, whose values would change meaning")
        slope = float(ds.get("RescaleSlope", 1) or 1) * (1 << shift)
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(float(ds.get("RescaleIntercept", 0) or 0))
        ds.BitsStored, ds.HighBit = precision, precision - 1
        pixels = pixels >> shift
    if precision == 8:  # baseline JPEG: one byte a value
        ds.BitsAllocated = 8
        pixels = pixels.astype(np.int8 if ds.PixelRepresentation else np.uint8)
    return pixels


def _rle_plugin() -> str:
    """pydicom's RLE encoder; the pylibjpeg-rle plugin (same bytes, ~10x faster) when present."""
    from pydicom.pixels.encoders import RLELosslessEncoder

    return "pylibjpeg" if "pylibjpeg" in RLELosslessEncoder.available_plugins else "pydicom"
