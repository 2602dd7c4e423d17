#!/usr/bin/env python
"""Pre-model cost by transfer syntax: the same image in each, pydicom's decoders against edgeinfer's, in one run.

    .venv/bin/python benchmarks/codec_bench.py [DATA_DIR] [--seed 2027] [--repeats 7] [--json OUT] [--report OUT.md]

A benchmark, not a test. The largest uncompressed image of a phantom set (DATA_DIR, or one generated
at full detector size) is encoded in every transfer syntax edgeinfer's imagecodecs plugin decodes
(``edgeinfer/dicomio/codecs.py``), and kept uncompressed for reference. For each:

- **decode, one thread**: the median of ``--repeats`` decodes of the frame by
  :func:`edgeinfer.dicomio.decode_frame`, its checks included, with pydicom's plugins in pydicom's
  order (what edgeinfer did before the plugin) and with the plugin first (what it does now);
- **two threads**: decodes per second with two threads decoding at once, over one thread's. Above 1
  only where the decoder releases the GIL, and at most the number of cores;
- **decode at the model's size**: the median decode when the intake says how small the frame may come
  back (:func:`edgeinfer.preprocess.decode_size` for the embedded bundle): JPEG 2000 leaves out whole
  wavelet levels, and the decoded size is shown; the other syntaxes decode in full;
- **intake**: read + decode + preprocess (:meth:`edgeinfer.intake.Intake.take` on the file, the
  embedded bundle's preprocessing), the median per image: the pre-model cost of one image.

Run it on an idle machine: with 2 cores, anything else running makes the figures meaningless.
"""
from __future__ import annotations

import copy
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import dicom_files, machine_line, phantom_set, publish, script_parser  # noqa: E402

#: the report's format (its JSON says which kind of result it is)
FORMAT = 1


def _largest_uncompressed(files: list[Path]):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    best = None
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and (
                best is None or ds.Rows * ds.Columns > best[1]):
            best = (f, ds.Rows * ds.Columns)
    if best is None:
        raise SystemExit("no uncompressed image in the data folder")
    return pydicom.dcmread(best[0])


def encodings(folder: Path, out: Path) -> dict[str, Path]:
    """{transfer syntax name: file} for the largest uncompressed image, uncompressed and in each syntax."""
    from pydicom.pixels import pixel_array

    from edgeinfer.dicomio.codecs import DECODER_DEPENDENCIES
    from edgeinfer.phantom.dicom import compress

    src = _largest_uncompressed(dicom_files(folder))
    pixels = pixel_array(src)
    out.mkdir(parents=True, exist_ok=True)
    files = {src.file_meta.TransferSyntaxUID.name: out / "uncompressed.dcm"}
    src.save_as(files[src.file_meta.TransferSyntaxUID.name])
    for ts in sorted(DECODER_DEPENDENCIES, key=lambda t: t.name):
        ds = copy.deepcopy(src)  # compress may change the header (lossy JPEG: fewer bits, a new slope)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compress(ds, ts, pixels)
        files[ts.name] = out / f"{ts.name.split()[0]}-{len(files)}.dcm"
        ds.save_as(files[ts.name])
    return files


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def _two_threads(fn, repeats: int) -> float:
    """Decodes per second with two threads at once, over one thread's (the same work each way)."""
    t0 = time.perf_counter()
    for _ in range(2 * repeats):
        fn()
    one = time.perf_counter() - t0
    threads = [threading.Thread(target=lambda: [fn() for _ in range(repeats)]) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return one / (time.perf_counter() - t0)


class _pydicom_order:
    """decode_frame as it was before the plugin: pydicom's plugins, in pydicom's order."""

    def __enter__(self):
        from edgeinfer.dicomio import codecs

        self.codecs, self.preferred = codecs, codecs.preferred
        codecs.preferred = lambda ts: ""

    def __exit__(self, *exc):
        self.codecs.preferred = self.preferred


def measure(files: dict[str, Path], repeats: int) -> list[dict]:
    import contextlib
    import functools

    import pydicom

    from edgeinfer.bundle import default_bundle_path, load_bundle
    from edgeinfer.dicomio import decode_frame, read_dataset
    from edgeinfer.intake import Image, Intake
    from edgeinfer.preprocess import decode_size

    intake = Intake.for_bundle(load_bundle(default_bundle_path()))
    rows = []
    for name, path in files.items():
        compressed = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
        ours = read_dataset(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = {"transfer_syntax": name, "bytes": path.stat().st_size,
                   "shape": list(decode_frame(ours, 0).shape), "decode_ms": {}, "two_threads": {}}
            for who, order in (("pydicom", _pydicom_order), ("edgeinfer", contextlib.nullcontext)):
                with order():  # around the timings, never inside them: the threads share it
                    fn = lambda: decode_frame(ours, 0)  # noqa: E731
                    row["decode_ms"][who] = _median_ms(fn, repeats)
                    # uncompressed pixels are viewed, not decoded: two threads would time thread start-up
                    row["two_threads"][who] = _two_threads(fn, max(2, repeats // 2)) if compressed else None
            at_least = functools.partial(decode_size, ds=ours, spec=intake.spec)
            row["model_size"] = {"shape": list(decode_frame(ours, 0, at_least=at_least).shape),
                                 "decode_ms": _median_ms(lambda: decode_frame(ours, 0, at_least=at_least), repeats)}
        took = [intake.take(path) for _ in range(repeats + 1)][1:]
        if not all(isinstance(t, Image) for t in took):
            raise SystemExit(f"the intake rejected {path}: {took[0]}")
        row["intake_ms"] = {s: float(np.median([t.timings_ms[s] for t in took])) for s in ("read", "decode", "preprocess")}
        row["intake_ms"]["total"] = float(np.median([sum(t.timings_ms.values()) for t in took]))
        rows.append(row)
    return rows


def render(r: dict) -> str:
    shape = "×".join(str(x) for x in r["rows"][0]["shape"])
    lines = [f"# Pre-model cost by transfer syntax, one {shape} image, {r['machine']}", "",
             "| transfer syntax | file MB | decode, pydicom's plugins | decode, edgeinfer | 2 threads / 1, pydicom's "
             "| 2 threads / 1, edgeinfer | decode at the model's size | intake: read + decode + preprocess |",
             "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for row in r["rows"]:
        d, i = row["decode_ms"], row["intake_ms"]
        t = {k: "—" if v is None else f"{v:.2f}x" for k, v in row["two_threads"].items()}
        m = row.get("model_size")
        small = "—" if not m or m["shape"] == row["shape"] else \
            f"{m['decode_ms']:.1f} ms ({'×'.join(str(x) for x in m['shape'])})"
        lines.append(f"| {row['transfer_syntax']} | {row['bytes'] / 1e6:.1f} | {d['pydicom']:.1f} ms | "
                     f"{d['edgeinfer']:.1f} ms | {t['pydicom']} | {t['edgeinfer']} | {small} | "
                     f"{i['total']:.1f} ms ({i['read']:.1f} + {i['decode']:.1f} + {i['preprocess']:.1f}) |")
    lines += ["", f"Medians of {r['repeats']} decodes by `edgeinfer.dicomio.decode_frame` (its checks included), files "
              "in the page cache: with pydicom's plugins in pydicom's order (pylibjpeg first, as before the plugin), "
              "and as it is, with the imagecodecs plugin first. Two threads over one: decodes per second, the same "
              "work each way. Decode at the model's size: the frame decoded as small as the embedded bundle's "
              "preprocessing allows (JPEG 2000 only; — where that is the full size). The intake column is "
              "`Intake.take` as it is.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = script_parser(__doc__, n=6, seed=2027)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    import tempfile

    data = phantom_set(args.data, args.n, args.seed, prefix="codec-bench-")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="codec-bench-encoded-") as tmp:
        rows = measure(encodings(data, Path(tmp)), args.repeats)
    r = {"edgeinfer_codec_bench": FORMAT, "machine": machine_line(flags=True), "repeats": args.repeats,
         "rows": rows, "wall_s": time.perf_counter() - t0, "data": {"path": str(data), "n": args.n, "seed": args.seed}}
    publish(r, render(r), args.json, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
