"""The phantom triage CNN: small, fast on a CPU, and plain ops only (Conv, BN, ReLU, pooling).

Plain ops matter downstream: BatchNorm folds into Conv at export, and every layer
quantizes to the Q/DQ form TensorRT and OpenVINO accept.
"""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class TriageNet(nn.Module):
    """Image (N, 1, H, W) -> per-finding probabilities (N, n_labels).

    ``logits`` is what training optimises; ``forward`` returns probabilities, which is what
    the exported graph computes and the runtime scores.
    """

    def __init__(self, n_labels: int = 2, widths: tuple[int, ...] = (16, 24, 48, 96, 128), in_channels: int = 1):
        super().__init__()
        layers, cin = [], in_channels
        for w in widths:
            layers.append(_block(cin, w, stride=2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * cin, n_labels)
        # training-only localisation head on the 1/16 feature map (dense supervision from the
        # phantom's known finding masks); unused by forward(), so it is not in the exported graph
        self.aux = nn.Conv2d(widths[-2], n_labels, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_map(x)[0]

    def logits_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.parts(x)[:2]

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, training-only localisation map, class-activation map on the last feature map)."""
        f = self.features[:-1](x)
        heat = self.aux(f)
        f = self.features[-1](f)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled), heat, nn.functional.conv2d(f, self.cam_weights()[:, :, None, None])

    def cam_weights(self) -> torch.Tensor:
        """(labels, C): each channel's weight in the class-activation map, the mean and the max half of
        the linear head summed (what export puts in the graph: ``export/cam.py``)."""
        c = self.head.weight.shape[1] // 2
        return self.head.weight[:, :c] + self.head.weight[:, c:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def phantom_triage_net() -> TriageNet:
    """Factory used by ``edgeinfer export --factory edgeinfer_export.models:phantom_triage_net``."""
    return TriageNet(n_labels=2)


class SegNet(nn.Module):
    """A U-Net whose output is per-pixel probabilities (sigmoid): (N, C, H, W) -> (N, labels, H, W).
    ``logits`` is what training optimises; the exported graph computes ``forward``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def phantom_ct_net() -> SegNet:
    """The phantom head-CT haemorrhage U-Net: MONAI's 2D ``UNet``, 3 window channels in, one label out,
    BatchNorm (folds into the convolutions at export, quantizes cleanly), 4 levels of 16-128 channels."""
    from monai.networks.nets import UNet

    return SegNet(UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                       num_res_units=1, norm="batch"))
