"""benchmarks/intake_bench.py, intake_scaling.py and codec_bench.py run (a smoke test on a few files, never a timing)."""
from __future__ import annotations

import importlib.util

from helpers import ROOT


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_intake_bench_and_scaling_run(phantom_dir):
    from edgeinfer.bundle import default_bundle_path, load_bundle
    from edgeinfer.intake import Intake, discover

    bundle = load_bundle(default_bundle_path())
    files = [f for f in discover([phantom_dir]) if f.suffix == ".dcm"][:4]
    groups = _script("intake_bench").measure(bundle, files, repeats=1)
    assert sum(g["images"] for k, g in groups.items() if k.endswith("every window")) == 4
    assert all(g["median_ms"]["runtime"]["total"] > 0 and g["speedup_total"] > 0 for g in groups.values())
    rows = _script("intake_scaling").measure(Intake.for_bundle(bundle), files, [1, 2], repeats=1)
    assert [(r["kind"], r["workers"]) for r in rows] == [("threads", 1), ("threads", 2), ("processes", 1),
                                                         ("processes", 2)]
    assert all(r["images"] == 4 and r["images_per_s"] > 0 for r in rows)


def test_codec_bench_encodes_every_syntax_the_plugin_decodes_and_runs(phantom_dir, tmp_path):
    from edgeinfer.dicomio.codecs import DECODER_DEPENDENCIES

    mod = _script("codec_bench")
    files = mod.encodings(phantom_dir, tmp_path)
    assert set(files) == {"Explicit VR Little Endian"} | {ts.name for ts in DECODER_DEPENDENCIES}
    rows = mod.measure(files, repeats=1)
    assert len(rows) == len(files)
    for row in rows:
        assert row["shape"] == rows[0]["shape"] and row["intake_ms"]["total"] > 0
        assert all(v > 0 for v in row["decode_ms"].values())
        compressed = row["transfer_syntax"] != "Explicit VR Little Endian"
        assert all((v is not None) == compressed for v in row["two_threads"].values())
        assert row["model_size"]["decode_ms"] > 0
        assert row["model_size"]["shape"] == row["shape"] or "JPEG 2000" in row["transfer_syntax"]
    assert "| RLE Lossless |" in mod.render({"machine": "test", "repeats": 1, "rows": rows})


def test_heatmap_cost_runs_and_the_pruned_graph_has_no_map(phantom_dir, tmp_path):
    import onnx

    from edgeinfer.bundle import load_bundle

    mod = _script("heatmap_cost")
    bundle = load_bundle()
    pruned = mod.without_map(bundle.artifact(precision="fp32").path, "probs", tmp_path / "p.onnx")
    assert [o.name for o in onnx.load(str(pruned)).graph.output] == ["probs"]
    files = sorted(phantom_dir.rglob("*.dcm"))[:2]
    (row,) = mod.measure(bundle, files, ["fp32"], rounds=4, threads=1)
    assert row["call_with_map_s"] > 0 and row["call_without_map_s"] > 0 and row["heatmaps_per_image_s"] > 0
    assert "| fp32 |" in mod.render({"machine": "test", "bundle": "b", "images": 2, "rounds": 4, "rows": [row]})


def test_seg_bench_runs_and_keeps_every_frame_by_default():
    mod = _script("seg_bench")
    r = mod.measure(size=64, thickness=5.0, repeats=1)
    kept, slim = r["rows"]
    assert kept["frames"] == r["slices"] and 0 < slim["frames"] < kept["frames"]
    assert all(x["build_s"] > 0 and x["encode_s"] > 0 and x["bytes"] > 0 for x in r["rows"])
    assert "| kept |" in mod.render({"machine": "test", "repeats": 1, **r})


def test_ct_bench_measures_a_volume_per_mode(tmp_path):
    import queue

    mod = _script("ct_bench")
    study = mod.write_study(tmp_path, 24)
    assert study["slices"] == 24 and study["thickness_mm"] == 0.625
    q = queue.Queue()
    mod._pre_model(str(tmp_path), 1, q)
    pre = q.get()
    assert pre["headers_s"] > 0 and pre["pixels_s"] > 0 and pre["model_grid"][:2] == [3, 24]
    mod._mode(str(tmp_path), "onnxruntime", "int8", 1, 1, q)
    row = q.get()
    assert row["objects"] == ["seg", "sr"] and row["wall_s"] > 0 and set(row["volume_ml"]) == {"hemorrhage"}
    text = mod.render({"machine": "test", "repeats": 1, "threads": 1, "study": study, "pre_model": pre,
                       "rows": [{"backend": "onnxruntime", "precision": "int8", **row},
                                {"backend": "openvino", "precision": "fp16", "skipped": "no such artifact"}],
                       "node": None})
    assert "| onnxruntime | int8 |" in text and "skipped: no such artifact" in text
