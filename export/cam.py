"""Class-activation maps in the exported graph (CAM, Zhou et al. 2016).

A classifier that ends in global pooling and one linear layer scores ``w_l . pool(F)``, where ``F`` is the
last feature map; ``M_l = sum_c w_lc F_c`` (the same weights, applied at every position instead of after
pooling) says where that score comes from. No gradients are needed, so an ONNX, OpenVINO or TensorRT
engine can output it beside the probabilities: export adds it as a second named output, computed from the
feature map the probabilities already use (one 1x1 convolution, no second pass through the network).

A head is recognised by its structure (:func:`find_cam_head`); a model whose head is not one of these is
exported without a CAM output and says so. What the runtime needs to place the map on the image (its
grid and that it covers the model's input) goes into the manifest's output entry (:func:`cam_output_entry`).

Heads recognised:

``TriageNet`` (the phantom model)
    ``features`` then the concatenation of the spatial mean and max of each channel, then ``head``
    (Linear over 2C). The mean half is exactly CAM; for the max half the channel's weight is applied at
    every position too, so ``M_l = sum_c (w_l,c + w_l,C+c) F_c``.
MONAI ``DenseNet121`` (optionally wrapped as ``.net``, e.g. with a sigmoid)
    ``features``, then ``class_layers`` = ReLU, adaptive average pooling, flatten, Linear: exactly CAM on
    ``ReLU(features)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

#: the name of the CAM output in every graph edgeinfer exports
CAM_OUTPUT = "cam"
#: the manifest's ``role`` of that output
CAM_ROLE = "class_activation_map"


@dataclass
class CamHead:
    """How one architecture's probabilities and CAM come from one pass: ``features(x)`` -> the last
    feature map F (N, C, h, w); ``probs(F)`` -> what the model's ``forward`` returns; ``weights`` (L, C):
    the per-label weight of each channel."""

    kind: str
    features: Callable
    probs: Callable
    weights: Any


def find_cam_head(model) -> CamHead | None:
    """The CAM head of ``model`` if its architecture is one :mod:`export.cam` knows, else None."""
    import torch

    net = getattr(model, "net", model)
    if type(net).__name__ == "TriageNet" and hasattr(net, "features") and isinstance(getattr(net, "head", None),
                                                                                     torch.nn.Linear):
        def probs(f):
            return torch.sigmoid(net.head(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)))

        return CamHead("TriageNet: mean+max pooling, linear", net.features, probs, net.cam_weights().detach())
    layers = getattr(net, "class_layers", None)
    if hasattr(net, "features") and isinstance(layers, torch.nn.Sequential) and \
            [type(m).__name__ for m in layers] == ["ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear"]:
        linear = layers[-1]
        outer_sigmoid = net is not model   # edgeinfer's WithSigmoid wrapper: probabilities out

        def features(x):
            return layers[0](net.features(x))

        def probs(f):
            y = linear(layers[2](layers[1](f)))
            return torch.sigmoid(y) if outer_sigmoid else y

        return CamHead("DenseNet: ReLU, global average pooling, linear", features, probs, linear.weight.detach())
    return None


def with_cam(model, head: CamHead):
    """``model`` as a module returning ``(probabilities, cam)`` from one pass (cam: (N, labels, h, w))."""
    import torch

    class WithCam(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("cam_weight", head.weights.clone()[:, :, None, None])

        def forward(self, x):
            f = head.features(x)
            return head.probs(f), torch.nn.functional.conv2d(f, self.cam_weight)

    return WithCam().eval()


def cam_output_entry(labels: list[str], grid: tuple[int, int], input_size: tuple[int, int], kind: str) -> dict:
    """The manifest's entry for the CAM output: its role, and the geometry the runtime places it by (the grid
    covers the model's whole input, pixel centres aligned as in a bilinear resize)."""
    return {"name": CAM_OUTPUT, "shape": ["batch", len(labels), int(grid[0]), int(grid[1])], "dtype": "float32",
            "labels": list(labels), "role": CAM_ROLE,
            "geometry": {"covers": "input", "grid": [int(grid[0]), int(grid[1])],
                         "input_size": [int(input_size[0]), int(input_size[1])], "head": kind}}
