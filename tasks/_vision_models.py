"""The image models of the four papers' vision experiments, built from torchvision and timm.

``build_model(name, num_classes, cifar_stem=..., checkpoint=...)``; :data:`MODELS` lists the names.

- ``resnet18``/``resnet50``: torchvision's; on 32x32 inputs (``cifar_stem=True``) the 7x7 stride-2 stem and
  its max-pool become one 3x3 stride-1 conv, the usual CIFAR ResNet (He et al. 2016, Sec. 4.2; Mechanic M-3).
- ``resnet18_metaoptimize``: the authors' released CIFAR ResNet-18 (kuangliu/pytorch-cifar layout). Its 62
  tensors are torchvision's CIFAR-stem ResNet-18's, in the same order; it differs in initialisation only:
  torch's default layer init instead of torchvision's Kaiming-normal convs.
- ``densenet_cifar``: D-Adaptation's CIFAR-100 net, kuangliu's ``densenet_cifar`` = torchvision's DenseNet
  with blocks [6, 12, 24, 16], growth 12, 24 stem channels, compression 0.5, and a bare 3x3 stem conv
  (no BN/ReLU/max-pool after it, as kuangliu's).
- ``wrn16_4``, ``wrn16_8``, ``wrn40_10``: Wide ResNets (Zagoruyko & Komodakis 2016), :class:`WideResNet`.
- ``vit_*`` (any timm ViT name, e.g. ``vit_tiny_patch16_224``): timm's, from scratch or from the weights file
  ``checkpoint`` (timm's loader, head replaced when the class count differs); never a hub download.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn


def _cifar_stem(model: torchvision.models.ResNet) -> torchvision.models.ResNet:
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    model.maxpool = nn.Identity()
    return model


def resnet(depth: int, num_classes: int, cifar_stem: bool) -> nn.Module:
    model = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](num_classes=num_classes)
    return _cifar_stem(model) if cifar_stem else model


def resnet18_metaoptimize(num_classes: int) -> nn.Module:
    """MetaOptimize's CIFAR ResNet-18: same layers, torch's default init (the authors' code sets none)."""
    model = resnet(18, num_classes, cifar_stem=True)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            module.reset_parameters()
    return model


def densenet_cifar(num_classes: int) -> nn.Module:
    growth = 12
    model = torchvision.models.DenseNet(
        growth_rate=growth,
        block_config=(6, 12, 24, 16),
        num_init_features=2 * growth,
        num_classes=num_classes,
    )
    model.features.conv0 = nn.Conv2d(3, 2 * growth, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.features.conv0.weight)  # torchvision's DenseNet init
    for name in ("norm0", "relu0", "pool0"):
        setattr(model.features, name, nn.Identity())
    return model


class WideBlock(nn.Module):
    """Pre-activation block BN-ReLU-conv3x3-BN-ReLU-conv3x3; 1x1 conv shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(torch.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-width for 32x32 inputs: (depth - 4) / 6 blocks per stage, widths 16k, 32k, 64k."""

    def __init__(self, depth: int, width: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth {depth} must be 6n + 4")
        n, widths = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False)]
        for stage in range(3):
            for i in range(n):
                cin = widths[stage] if i == 0 else widths[stage + 1]
                layers.append(WideBlock(cin, widths[stage + 1], stride=2 if stage and i == 0 else 1))
        layers += [nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def vit(name: str, num_classes: int, checkpoint: str | Path | None, image_size: int) -> nn.Module:
    """timm's ``name``; with ``checkpoint`` its weights come from that local file (timm's pretrained path with
    the file as source: position embeddings resized, a head of another class count dropped)."""
    if checkpoint is None:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size)
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"ViT checkpoint {path} not found (task.checkpoint names a local weights file)"
        )
    return timm.create_model(
        name,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        num_classes=num_classes,
        img_size=image_size,
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": lambda n, stem, **_: resnet(18, n, stem),
    "resnet50": lambda n, stem, **_: resnet(50, n, stem),
    "resnet18_metaoptimize": lambda n, stem, **_: resnet18_metaoptimize(n),
    "densenet_cifar": lambda n, stem, **_: densenet_cifar(n),
    "wrn16_4": lambda n, stem, **_: WideResNet(16, 4, n),
    "wrn16_8": lambda n, stem, **_: WideResNet(16, 8, n),
    "wrn40_10": lambda n, stem, **_: WideResNet(40, 10, n),
}
CIFAR_ONLY = ("resnet18_metaoptimize", "densenet_cifar", "wrn16_4", "wrn16_8", "wrn40_10")


def build_model(
    name: str,
    num_classes: int,
    *,
    cifar_stem: bool,
    image_size: int,
    checkpoint: str | Path | None = None,
) -> nn.Module:
    """The model ``name`` for ``num_classes`` classes (seeded by the caller beforehand)."""
    if name.startswith("vit_"):
        return vit(name, num_classes, checkpoint, image_size)
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not one of {sorted(MODELS)} or a timm 'vit_*' name")
    if checkpoint is not None:
        raise ValueError(f"checkpoint is for the timm ViTs; model={name!r} trains from scratch")
    if name in CIFAR_ONLY and not cifar_stem:
        raise ValueError(f"model={name!r} is a 32x32 CIFAR net")
    return MODELS[name](num_classes, cifar_stem)
