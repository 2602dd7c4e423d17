import onnx
import pytest
from helpers import tiny_onnx

from edgeinfer import onnxgraph
from edgeinfer.errors import IntegrityError


def test_describes_inputs_outputs_and_opset(tmp_path):
    info = onnxgraph.inspect(tiny_onnx(tmp_path / "m.onnx", size=16))
    assert info.opset == 17
    assert info.inputs == {"image": ["batch", 1, 16, 16]}
    assert info.outputs == {"probs": ["batch", 2]}
    assert info.quant_form is None


def test_custom_domain_is_refused(tmp_path):
    p = tiny_onnx(tmp_path / "m.onnx", domain="com.example.custom")
    with pytest.raises(IntegrityError, match="custom domains"):
        onnxgraph.inspect(p)


def test_damaged_file_is_refused(tmp_path):
    p = tiny_onnx(tmp_path / "m.onnx")
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(IntegrityError, match="not a readable ONNX model"):
        onnxgraph.inspect(p)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/dir.bin"])
def test_external_data_escaping_the_bundle_is_refused(tmp_path, location):
    p = tiny_onnx(tmp_path / "m.onnx")
    m = onnx.load(str(p))
    w = m.graph.initializer[0]
    w.data_location = onnx.TensorProto.EXTERNAL
    w.ClearField("raw_data")
    w.ClearField("float_data")
    e = w.external_data.add()
    e.key, e.value = "location", location
    onnx.save(m, str(p))
    with pytest.raises(IntegrityError, match="outside the bundle"):
        onnxgraph.inspect(p)
