"""export-triton: each embedded bundle as a Triton model repository, every config.pbtxt read back with Triton's
own model-config message, the model files the bundle's own, priorities and identity in the config."""
from __future__ import annotations

import argparse

import pytest

from edgeinfer.bundle import load_bundle, sha256_file
from edgeinfer.errors import ExportError
from edgeinfer_export.cli import add_parsers
from edgeinfer.triton import REQUEST_PRIORITY
from edgeinfer_export.triton import model_config, parse_config, write_repository


@pytest.mark.parametrize("name", ["phantom-cxr", "phantom-ct-head"])
def test_every_artifact_becomes_a_model_triton_would_load(tmp_path, name):
    bundle = load_bundle(name)
    made = write_repository(bundle, tmp_path / "repo", max_batch=16)
    assert [p.name for p in made] == [f"{name}-{a.id}" for a in bundle.artifacts]
    m = bundle.manifest
    for path, a in zip(made, bundle.artifacts):
        cfg = parse_config((path / "config.pbtxt").read_text())
        assert cfg.name == path.name and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
        assert sha256_file(path / "1" / "model.onnx") == a.sha256                 # the bundle's very graph
        assert [i.name for i in cfg.input] == [t["name"] for t in m["inputs"]]
        assert list(cfg.input[0].dims) == m["inputs"][0]["shape"][1:]              # no batch axis: max_batch_size
        assert [(o.name, list(o.dims)) for o in cfg.output] == [(t["name"], t["shape"][1:]) for t in m["outputs"]]
        db = cfg.dynamic_batching
        assert db.priority_levels == 3 and db.default_priority_level == REQUEST_PRIORITY["ROUTINE"]
        assert db.priority_queue_policy[3].timeout_action == 1                    # DELAY: routine waits, never dropped
        assert [g.count for g in cfg.instance_group] == [2]    # one instance stalls the priority scheduler
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["edgeinfer_bundle_digest"] == bundle.digest and params["edgeinfer_artifact_sha256"] == a.sha256
        accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        want = {"fp16": "FP16", "int8": "INT8"}.get(a.precision)
        assert ([x.parameters["precision_mode"] for x in accel] == [want]) if want else not accel


def test_an_existing_model_is_kept_unless_overwritten_and_bad_requests_say_why(tmp_path):
    bundle = load_bundle(None)
    repo = tmp_path / "repo"
    (first,) = write_repository(bundle, repo, artifacts=["fp32"])
    (first / "config.pbtxt").write_text("changed")
    with pytest.raises(ExportError, match="exists; pass --overwrite"):
        write_repository(bundle, repo, artifacts=["fp32"])
    write_repository(bundle, repo, artifacts=["fp32"], overwrite=True)
    assert parse_config((first / "config.pbtxt").read_text()).name == "phantom-cxr-fp32"
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]          # no staging folder left behind
    with pytest.raises(ExportError, match=r"has no artifact \['fp64'\]"):
        write_repository(bundle, repo, artifacts=["fp64"])
    with pytest.raises(ExportError, match="max-batch 0"):
        model_config(bundle, bundle.artifact(precision="fp32"), max_batch=0)
    with pytest.raises(ExportError, match="not a Triton ModelConfig"):
        parse_config('name: "x"\nmax_batch_sizes: 3\n')


def test_the_cli_writes_the_repository(tmp_path, capsys):
    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers())
    args = p.parse_args(["export-triton", "phantom-ct-head", str(tmp_path / "repo"), "--artifacts", "int8"])
    assert args.func(args) == 0
    assert (tmp_path / "repo" / "phantom-ct-head-int8" / "1" / "model.onnx").is_file()
    assert "tritonserver --model-repository" in capsys.readouterr().out
