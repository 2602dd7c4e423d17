#!/usr/bin/env python
"""Does the fast preprocessing change any decision? The runtime against the test oracle, end to end.

    .venv/bin/python benchmarks/preprocess_agreement.py [DATA_DIR] [--n 480] [--seed 4004] [--max-size 1024]
        [--syntax jpeg2000-lossless|jpeg2000|jpeg-baseline|jpeg-extended] [--bundle BUNDLE] [--json OUT]
        [--report OUT.md]

The oracle is the preprocessing the embedded bundle was trained, calibrated and validated with
(implementation "1", kept verbatim in ``tests/oracle_preprocess.py``); the runtime preprocesses with
:data:`edgeinfer.preprocess.PREPROCESS_IMPL`. On a phantom set the model has never seen (``--seed`` differs
from those of training, calibration and validation; generated into DATA_DIR unless it holds one already),
both paths go through the whole triage (:class:`edgeinfer.triage.TriageEngine`, ONNX Runtime FP32) and are
compared with ``edgeinfer validate``'s own functions: priority agreement study by study, score differences,
AUC, sensitivity and specificity against the set's labels. Every image's tensor is compared too (max and
mean |Δ|). The oracle decodes every frame at full size with pydicom's own plugins, in pydicom's order;
the runtime decodes a JPEG 2000 frame at reduced resolution when the model's input is much smaller,
and grey JPEG with libjpeg-turbo, whose inverse DCT rounds differently from pylibjpeg's libjpeg
(``--syntax`` re-encodes a generated set first, to compare those too; lossy JPEG keeps 8 or 12 bits,
``edgeinfer.phantom.dicom.compress``). A check, not a timing: it runs the slow oracle.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchutil import phantom_set, publish, script_parser  # noqa: E402
#: the report's format (its JSON says which kind of result it is)
FORMAT = 1


def oracle():
    """``tests/oracle_preprocess.py``, loaded from its file: the oracle lives with the tests, never in
    the runtime (and ``tests/`` on sys.path would shadow the ``edgeinfer`` package with ``tests/edgeinfer``)."""
    mod = sys.modules.get("oracle_preprocess")
    if mod is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("oracle_preprocess", ROOT / "tests" / "oracle_preprocess.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["oracle_preprocess"] = mod
        spec.loader.exec_module(mod)
    return mod


@contextmanager
def oracle_path():
    """Every intake in this block decodes frames at full size with pydicom's own plugins, in pydicom's
    order (as before edgeinfer's plugin), and preprocesses with the oracle (implementation 1)."""
    import edgeinfer.intake
    from edgeinfer.dicomio import codecs

    with mock.patch.object(edgeinfer.intake, "preprocess_pixels", oracle().preprocess_pixels), \
            mock.patch.object(edgeinfer.intake, "decode_size", lambda shape, ds, spec: None), \
            mock.patch.object(codecs, "preferred", lambda ts: ""):
        yield


#: --syntax: the transfer syntaxes a generated set may be re-encoded in
SYNTAXES = {"jpeg2000-lossless": JPEG2000Lossless, "jpeg2000": JPEG2000, "jpeg-baseline": JPEGBaseline8Bit,
            "jpeg-extended": JPEGExtended12Bit}


def reencode(folder: Path, syntax: str) -> None:
    """Re-encode every image of ``folder`` in place in ``syntax`` (a key of :data:`SYNTAXES`)."""
    import warnings

    from pydicom import dcmread
    from pydicom.pixels import pixel_array

    from edgeinfer.intake import discover
    from edgeinfer.phantom.dicom import compress

    for f in (p for p in discover([folder]) if p.suffix == ".dcm"):
        ds = dcmread(f)
        if ds.file_meta.TransferSyntaxUID == SYNTAXES[syntax]:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on re-encoding
            compress(ds, SYNTAXES[syntax], pixel_array(ds))
        ds.save_as(f)


def compare(bundle, files, labels: dict | None = None, threads: int | None = None) -> dict:
    """Triage ``files`` with the runtime's preprocessing and with the oracle's; the differences."""
    from edgeinfer.backends import RunnerOptions, create_runner
    from edgeinfer.intake import Image, Intake
    from edgeinfer.preprocess import PREPROCESS_IMPL
    from edgeinfer.triage import TriageEngine
    from edgeinfer_calibration.validate import compare_outcomes, outcomes_from_worklist

    ORACLE_IMPL = oracle().IMPL

    art = bundle.artifact(precision="fp32", format="onnx")
    op = bundle.manifest["triage"]["operating_point"]
    with create_runner(art, RunnerOptions(device="cpu", threads=threads), backend="onnxruntime") as runner:
        fast = TriageEngine(bundle, runner).run(files)
        with oracle_path():
            by_oracle = TriageEngine(bundle, runner).run(files)
    ref, got = outcomes_from_worklist(by_oracle.studies), outcomes_from_worklist(fast.studies)
    m_fast = compare_outcomes(ref, got, labels=labels, operating_point=op)
    m_oracle = compare_outcomes(ref, ref, labels=labels, operating_point=op)

    intake = Intake.for_bundle(bundle)
    tensor_max = display_max = 0.0
    tensor_means, outcome_mismatch = [], []
    for f in files:
        a = intake.take(f)
        with oracle_path():
            b = intake.take(f)
        if isinstance(a, Image) != isinstance(b, Image) or (not isinstance(a, Image) and a.code != b.code):
            outcome_mismatch.append(str(f))
            continue
        if isinstance(a, Image):
            d = np.abs(a.tensor - b.tensor)
            tensor_max = max(tensor_max, float(d.max()))
            tensor_means.append(float(d.mean()))
            display_max = max(display_max, float(np.abs(a.prepared.display - b.prepared.display).max()))
    by_priority = {}
    for u in ref:
        key = f"{ref[u].priority} -> {got[u].priority}" if u in got else f"{ref[u].priority} -> (missing)"
        by_priority[key] = by_priority.get(key, 0) + 1
    return {
        "edgeinfer_preprocess_agreement": FORMAT, "runtime_impl": PREPROCESS_IMPL, "oracle_impl": ORACLE_IMPL, "files": len(files),
        "images": len(tensor_means), "studies": m_fast["n_studies"],
        "priority_agreement": m_fast["agreement"], "disagreements": m_fast["disagreements"],
        "transitions": dict(sorted(by_priority.items())),
        "max_abs_score_diff": m_fast["max_abs_score_diff"], "mean_abs_score_diff": m_fast["mean_abs_score_diff"],
        "auc": {"runtime": m_fast.get("auc"), "oracle": m_oracle.get("auc")},
        "auc_diff": (None if m_fast.get("auc") is None else m_fast["auc"] - m_oracle["auc"]),
        "sensitivity": {"runtime": m_fast.get("sensitivity"), "oracle": m_oracle.get("sensitivity")},
        "specificity": {"runtime": m_fast.get("specificity"), "oracle": m_oracle.get("specificity")},
        "tensor_max_abs_diff": tensor_max, "tensor_mean_abs_diff": float(np.mean(tensor_means)) if tensor_means else None,
        "display_max_abs_diff": display_max, "rejections_that_differ": outcome_mismatch,
    }


def render(r: dict, data: str) -> str:
    f = lambda x, d=4: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    e = lambda x: "-" if x is None else f"{x:.2e}"  # noqa: E731 - differences can be far below 1e-4
    syntax = (r.get("data") or {}).get("syntax")
    syntax = f", re-encoded as {syntax}" if syntax else ""
    return "\n".join([
        f"# Preprocessing implementation {r['runtime_impl']} against the oracle ({r['oracle_impl']})", "",
        f"Unseen phantom set `{data}`{syntax}: {r['files']} files, {r['images']} images, {r['studies']} studies; "
        "ONNX Runtime FP32, the whole triage both ways.", "",
        "| | runtime | oracle |", "|---|--:|--:|",
        f"| AUC | {f(r['auc']['runtime'])} | {f(r['auc']['oracle'])} |",
        f"| sensitivity | {f(r['sensitivity']['runtime'], 3)} | {f(r['sensitivity']['oracle'], 3)} |",
        f"| specificity | {f(r['specificity']['runtime'], 3)} | {f(r['specificity']['oracle'], 3)} |", "",
        f"- priority agreement: {100 * r['priority_agreement']:.1f} % ({r['disagreements']} studies differ)",
        f"- study score |Δ|: max {e(r['max_abs_score_diff'])}, mean {e(r['mean_abs_score_diff'])}",
        f"- tensor |Δ| (after normalisation): max {e(r['tensor_max_abs_diff'])}, mean "
        f"{e(r['tensor_mean_abs_diff'])}; display image [0, 1]: max {e(r['display_max_abs_diff'])}",
        f"- images rejected by one path only: {len(r['rejections_that_differ'])}", ""])


def main(argv=None) -> int:
    ap = script_parser(__doc__, n=480, seed=4004, data_help="a phantom set with labels.csv (default: generate one)")
    ap.add_argument("--max-size", type=int, default=1024,
                    help="cap on the larger image side of a generated set; 0: full detector size")
    ap.add_argument("--syntax", choices=sorted(SYNTAXES), default=None,
                    help="re-encode the set in this transfer syntax first (the runtime decodes JPEG 2000 at reduced "
                         "resolution, lossy JPEG with libjpeg-turbo)")
    ap.add_argument("--bundle", default=None, help="default: the embedded phantom bundle")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    from edgeinfer.bundle import default_bundle_path, load_bundle
    from edgeinfer.intake import discover
    from edgeinfer.triage import read_study_labels

    data = phantom_set(args.data, args.n, args.seed, prefix="unseen-phantoms-", max_size=args.max_size or None)
    if args.syntax:
        reencode(data, args.syntax)
    bundle = load_bundle(args.bundle or default_bundle_path())
    r = compare(bundle, discover([data]), read_study_labels(data / "labels.csv"), args.threads)
    r["data"] = {"path": str(data), "n": args.n, "seed": args.seed, "max_size": args.max_size, "syntax": args.syntax}
    publish(r, render(r, str(data)), args.json, args.report)
    return 0 if r["priority_agreement"] == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
