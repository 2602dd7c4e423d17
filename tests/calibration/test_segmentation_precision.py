"""The head-CT segmentation bundle through calibrate and validate: a calibration set of slices spread through
each study's chosen series (read as the runtime reads them), FP16 and INT8 graphs for the U-Net, and the
segmentation gate (Dice and volumes against FP32, Dice and volume error against the phantom's masks)."""
from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

from edgeinfer.bundle import default_bundle_path, load_bundle
from edgeinfer.gate import GateConfig, evaluate_gate
from edgeinfer.phantom.ct_head import generate_ct
from edgeinfer_calibration.calibrate import calibrate_bundle
from edgeinfer_calibration.cli import add_parsers
from edgeinfer_calibration.dataset import volume_calibration_set
from edgeinfer_calibration.validate import segmentation_agreement


@pytest.fixture(scope="module")
def ct_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_precision")
    generate_ct(root / "calib", 2, seed=41)
    generate_ct(root / "val", 3, seed=42)
    return root / "calib", root / "val"


@pytest.fixture(scope="module")
def ct_copy(tmp_path_factory):
    dst = tmp_path_factory.mktemp("ct_bundle") / "phantom-ct-head"
    shutil.copytree(default_bundle_path().parent / "phantom-ct-head", dst)
    return dst


def test_the_calibration_set_is_slices_through_each_series_as_the_runtime_reads_them(ct_sets):
    calib, _ = ct_sets
    cs = volume_calibration_set(calib, load_bundle("phantom-ct-head"), samples=10, seed=0)
    assert cs.tensors.shape == (10, 3, 256, 256) and cs.tensors.dtype == np.float32
    assert 0.0 <= cs.tensors.min() and cs.tensors.max() <= 1.0          # windows clip to [0, 1]
    assert len({s.study_uid for s in cs.samples}) == 2 and len({s.path for s in cs.samples}) == 10
    assert cs.manifest["selection"]["samples"] == 10 and cs.manifest["kind"] == "volume slices"


def test_fp16_and_int8_of_the_unet_are_built_and_judged_by_the_segmentation_gate(ct_sets, ct_copy, tmp_path):
    calib, val = ct_sets
    calibrate_bundle(ct_copy, calib, samples=24, seed=0, use_cache=False)
    b = load_bundle(ct_copy)
    assert {a.id for a in b.artifacts} == {"fp32", "fp16", "int8"}
    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers())
    report = tmp_path / "report.json"
    args = p.parse_args(["validate", str(ct_copy), "--data", str(val), "--labels", str(val / "labels.csv"),
                         "--json", str(report), "--no-progress"])
    code = args.func(args)
    d = json.loads(report.read_text())
    for name in ("fp16", "int8"):
        seg = d["precisions"][name]["segmentation"]
        assert seg["n_studies"] == 3 and seg["volume_within_tolerance"] is not None
        assert {"dice_vs_fp32", "volume_vs_fp32"} <= set(d["precisions"][name]["checked"])
        assert seg["truth"]["n"] == 3                                     # against the phantom's masks too
    assert d["precisions"]["fp16"]["segmentation"]["mean_dice_vs_fp32"] > 0.98   # FP16 keeps the masks
    assert code == (0 if all(e["passed"] for e in d["precisions"].values()) else 2)
    recorded = load_bundle(ct_copy).artifact(precision="fp16").record["validation"]
    assert recorded["segmentation"]["n_studies"] == 3


def _study(uid, ml, mask):
    from edgeinfer.segmentation import pack_mask

    return {"study_uid": uid, "volumes_ml": {"hemorrhage": ml}, "segmentation": {"mask": pack_mask(mask[None])}}


def test_the_segmentation_gate_in_numbers():
    m = np.zeros((4, 8, 8), bool)
    m[1:3, 2:6, 2:6] = True
    moved = np.roll(m, 1, axis=2)
    ref = [_study("1", 10.0, m), _study("2", 0.05, np.zeros_like(m))]
    same = segmentation_agreement(ref, ref, GateConfig())
    assert same["mean_dice_vs_fp32"] == 1.0 and same["volume_within_tolerance"] == 1.0 and same["n_with_masks"] == 1
    got = [_study("1", 10.3, moved), _study("2", 0.14, np.zeros_like(m))]   # 3 % off; +0.09 mL on a tiny one
    off = segmentation_agreement(ref, got, GateConfig())
    assert off["mean_dice_vs_fp32"] == pytest.approx(0.75) and off["volume_within_tolerance"] == 0.5
    assert off["worst_volume_diff"] == {"study_uid": "1", "ml": 10.3, "fp32_ml": 10.0}
    verdict = evaluate_gate({}, {"agreement": 1.0, "segmentation": off}, GateConfig())
    assert not verdict.passed and any("Dice 0.7500" in r for r in verdict.reasons)
    assert any("50.0% of studies measure a volume within max(2%, 0.1 mL)" in r for r in verdict.reasons)
    assert evaluate_gate({}, {"agreement": 1.0, "segmentation": same}, GateConfig()).passed
