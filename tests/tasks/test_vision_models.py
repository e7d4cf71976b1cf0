"""tasks/_vision_models.py: every model builds, runs and has its published size; ViT weights from a file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optimizers._metaoptimize_blocks import partition
from tasks._vision_models import build_model


def _millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# parameters (millions) as the papers and torchvision state them: ResNet-18 11M (Mechanic M-3), WRN-40-10
# 56M (Mechanic M-3), WRN-16-8 11.0M and WRN-16-4 2.7M (Zagoruyko & Komodakis Table 1), densenet_cifar 1.0M
@pytest.mark.parametrize(
    ("name", "classes", "millions"),
    [
        ("resnet18", 10, 11.17),
        ("resnet18_metaoptimize", 10, 11.17),
        ("densenet_cifar", 100, 1.04),
        ("wrn16_4", 100, 2.77),
        ("wrn16_8", 10, 10.96),
        ("wrn40_10", 100, 55.90),
    ],
)
def test_cifar_models(name: str, classes: int, millions: float) -> None:
    torch.manual_seed(0)
    model = build_model(name, classes, cifar_stem=True, image_size=32)
    assert _millions(model) == pytest.approx(millions, abs=0.01)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, classes)


def test_cifar_stem_keeps_resolution() -> None:
    cifar = build_model("resnet18", 10, cifar_stem=True, image_size=32)
    imagenet = build_model("resnet18", 10, cifar_stem=False, image_size=224)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, torch.nn.MaxPool2d)
    with pytest.raises(ValueError, match="32x32 CIFAR net"):
        build_model("wrn16_4", 10, cifar_stem=False, image_size=224)


def test_metaoptimize_variant_is_the_six_block_resnet18() -> None:
    torch.manual_seed(0)
    ours = build_model("resnet18_metaoptimize", 10, cifar_stem=True, image_size=32)
    blocks = partition(ours, "resnet18")  # the authors' HF.py preset [3, 12, 15, 15, 15, 2]
    assert [len(v) for v in blocks.values()] == [3, 12, 15, 15, 15, 2]
    torch.manual_seed(0)
    torchvision_init = build_model("resnet18", 10, cifar_stem=True, image_size=32)
    # torch's default conv init (kaiming-uniform, a=sqrt(5)) bounds weights by 1/sqrt(fan_in)
    w = ours.layer1[0].conv1.weight
    assert w.abs().max() <= 1 / (64 * 9) ** 0.5 + 1e-7
    assert torchvision_init.layer1[0].conv1.weight.abs().max() > 1 / (64 * 9) ** 0.5


def test_unknown_model_and_stray_checkpoint() -> None:
    with pytest.raises(ValueError, match="model='vgg11'"):
        build_model("vgg11", 10, cifar_stem=True, image_size=32)
    with pytest.raises(ValueError, match="checkpoint is for the timm ViTs"):
        build_model("resnet18", 10, cifar_stem=True, image_size=32, checkpoint="x.pt")


def test_vit_from_a_local_checkpoint(tmp_path: Path) -> None:
    """timm loads the file (no download), resamples the position embedding and drops a 1000-class head."""
    torch.manual_seed(0)
    source = build_model("vit_tiny_patch16_224", 1000, cifar_stem=False, image_size=224)
    path = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    tuned = build_model("vit_tiny_patch16_224", 10, cifar_stem=True, image_size=64, checkpoint=path)
    assert torch.equal(tuned.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert torch.equal(tuned.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    assert tuned.head.weight.shape == (10, 192)
    assert tuned.pos_embed.shape == (1, 1 + 16, 192)
    assert tuned(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model(
            "vit_tiny_patch16_224", 10, cifar_stem=True, image_size=64, checkpoint=tmp_path / "missing.pth"
        )
