"""ImageNet (ILSVRC-2012) classification (``task=imagenet``) from an ImageFolder tree.

    <root>/<folder>/train/<wnid>/*.JPEG      <root>/<folder>/val/<wnid>/*.JPEG

(``python scripts/download_data.py imagenet`` prints how to build it.) Training: RandomResizedCrop +
horizontal flip (+ timm's RandAugment, Mixup/CutMix and BCE loss where the recipe says so, D-Adaptation's
ViT row); evaluation: resize to ``image_size / crop_pct`` + centre crop, top-1 and top-5. PIL decoding runs in
DataLoader workers that hand over uint8 tensors in pinned memory; conversion to float and normalisation run
on the device, in ``channels_last`` on CUDA. Each epoch's order is a permutation drawn from ``(seed, epoch)``,
and so are the workers' augmentation seeds (``workers > 0``; with none, crops draw from torch's global RNG,
and Mixup/CutMix always draw from numpy's, seeded by the runner).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2 as T
from PIL import Image
from pydantic import Field
from timm.data import Mixup
from timm.data.auto_augment import rand_augment_transform
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

from tasks._vision_models import build_model
from tasks.base import DatasetMissingError, Scale, Task, register_task

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FETCH = "python scripts/download_data.py imagenet"


def image_folder(path: Path, transform: T.Transform) -> torchvision.datasets.ImageFolder:
    """torchvision's ImageFolder of ``path``; a missing tree or one without images is a one-line error."""
    if not path.is_dir():
        raise DatasetMissingError("ImageNet folder", str(path), FETCH)
    try:
        return torchvision.datasets.ImageFolder(str(path), transform=transform)
    except FileNotFoundError as err:
        raise ValueError(f"{path} holds no class folders with images ({err})") from err


def listing_record(dataset: torchvision.datasets.ImageFolder) -> dict[str, Any]:
    """Image count and a sha256 of the sorted (relative path, size) listing: hashing every byte of 1.3M
    JPEGs would take longer than an epoch."""
    root, digest = Path(dataset.root), hashlib.sha256()
    for path, _ in dataset.samples:
        digest.update(f"{Path(path).relative_to(root)}\t{Path(path).stat().st_size}\n".encode())
    return {"path": str(root), "images": len(dataset.samples), "listing_sha256": digest.hexdigest()}


@register_task("imagenet")
class ImageNet(Task):
    """``task=imagenet task.model=resnet50``; see ``configs/task/imagenet.yaml``."""

    #: validation images evaluated at ``scale=smoke``
    SMOKE_EVAL = Task.SMOKE_BATCH

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        scale: Scale = "paper",
        root: str | Path = "data",
        folder: str = "imagenet",
        model: str = "resnet50",
        checkpoint: str | None = None,
        batch_size: Annotated[int, Field(ge=1)] = 256,
        epochs: Annotated[int, Field(ge=1)] = 90,
        image_size: Annotated[int, Field(ge=8)] = 224,
        crop_pct: Annotated[float, Field(gt=0, le=1)] = 0.875,
        randaugment: str | None = None,
        mixup: Annotated[float, Field(ge=0)] = 0.0,
        cutmix: Annotated[float, Field(ge=0)] = 0.0,
        label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0,
        loss: Literal["ce", "bce"] = "ce",
        workers: Annotated[int, Field(ge=0)] = 8,
        eval_batch_size: Annotated[int, Field(ge=1)] = 250,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__(seed=seed, device=device, rank=rank, world_size=world_size, scale=scale)
        self.batch_size = min(batch_size, self.SMOKE_BATCH) if scale == "smoke" else batch_size
        self.check_batch_size(self.batch_size)
        self.epochs, self.model_name, self.checkpoint = epochs, model, checkpoint
        self.image_size, self.workers, self.eval_batch_size = image_size, workers, eval_batch_size
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        base = Path(root) / folder
        train_tf: list[T.Transform] = [
            T.RandomResizedCrop(image_size, antialias=True),
            T.RandomHorizontalFlip(),
        ]
        if randaugment:  # timm's RandAugment, on PIL images, configured as timm's transform factory does
            hparams = {
                "translate_const": int(image_size * 0.45),
                "img_mean": tuple(round(255 * m) for m in MEAN),
            }
            train_tf.append(rand_augment_transform(randaugment, hparams))
        self.train_set = image_folder(base / "train", T.Compose([*train_tf, T.PILToTensor()]))
        eval_tf = [
            T.Resize(int(image_size / crop_pct), antialias=True),
            T.CenterCrop(image_size),
            T.PILToTensor(),
        ]
        self.val_set = image_folder(base / "val", T.Compose(eval_tf))
        if self.val_set.classes != self.train_set.classes:
            raise ValueError(
                f"{base / 'val'} has {len(self.val_set.classes)} classes, {base / 'train'} has "
                f"{len(self.train_set.classes)}; they must name the same class folders"
            )
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the {len(self.train_set)} training images"
            )
        self.num_classes = len(self.train_set.classes)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1) * 255
        self.mixup = None
        if mixup or cutmix:
            self.mixup = Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                label_smoothing=label_smoothing,
                num_classes=self.num_classes,
            )
        self.label_smoothing = label_smoothing
        soft_loss = BinaryCrossEntropy(smoothing=label_smoothing) if loss == "bce" else None
        if self.mixup is not None:
            soft_loss = BinaryCrossEntropy(smoothing=0.0) if loss == "bce" else SoftTargetCrossEntropy()
        self.soft_loss = soft_loss
        self._source = {
            "kind": "imagefolder",
            "train": listing_record(self.train_set),
            "val": listing_record(self.val_set),
            "classes": self.num_classes,
        }

    def build_model(self) -> torch.nn.Module:
        model = build_model(
            self.model_name,
            self.num_classes,
            cifar_stem=False,
            image_size=self.image_size,
            checkpoint=self.checkpoint,
        ).to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train_set) // self.batch_size)

    def _loader(
        self, dataset: Any, batches: Any, generator: torch.Generator | None
    ) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
        )

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, float | None]]:
        n = len(self.train_set)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=gen).tolist()
        parts, factors = [], []
        for i in range(0, n, self.batch_size):
            start, stop, factor = self.rank_part(min(self.batch_size, n - i))
            parts.append(perm[i + start : i + stop])
            factors.append(factor)
        # the workers' base seed (their augmentations) is drawn from gen: a function of (seed, epoch)
        for (x, y), factor in zip(self._loader(self.train_set, parts, gen), factors, strict=True):
            yield x, y, factor

    def _to_input(self, images: torch.Tensor) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=memory_format)

    def loss(
        self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor, float | None]
    ) -> torch.Tensor:
        images, y, factor = batch
        x, y = self._to_input(images), y.to(self.device, non_blocking=True)
        if self.mixup is not None:
            x, y = self.mixup(x, y)  # soft targets [B, classes]
        logits = model(x)
        if self.soft_loss is not None:
            per_batch = self.soft_loss(logits, y)  # timm's losses average over the batch
            return per_batch if factor is None else per_batch * y.shape[0] * factor
        if factor is None:
            return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return F.cross_entropy(logits, y, reduction="sum", label_smoothing=self.label_smoothing) * factor

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Top-1 and top-5 accuracy (%) and mean cross-entropy on the validation images."""
        n = min(len(self.val_set), self.SMOKE_EVAL) if self.scale == "smoke" else len(self.val_set)
        batches = [
            list(range(i, min(i + self.eval_batch_size, n))) for i in range(0, n, self.eval_batch_size)
        ]
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros(2, device=self.device, dtype=torch.long)
        for images, y in self._loader(self.val_set, batches, None):
            logits, y = model(self._to_input(images)).float(), y.to(self.device)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            top5 = logits.topk(min(5, self.num_classes), dim=1).indices
            hits[0] += (top5[:, 0] == y).sum()
            hits[1] += (top5 == y[:, None]).any(dim=1).sum()
        top1, top5 = (hits.double() * 100.0 / n).tolist()
        return {"test/accuracy": top1, "test/top5": top5, "test/loss": loss_sum.item() / n}

    @property
    def data_source(self) -> dict[str, Any]:
        return dict(self._source)

    @staticmethod
    def fixture_overrides(tmp_path: Path) -> list[str]:
        """A tiny ImageFolder of PNGs (3 classes), for ``scale=smoke`` config tests."""
        write_imagefolder_fixture(tmp_path / "imagenet", classes=3, train_per_class=4, val_per_class=2)
        return [f"task.root={tmp_path}", "task.workers=1"]


def write_imagefolder_fixture(
    root: str | Path, classes: int, train_per_class: int, val_per_class: int, size: int = 40, seed: int = 0
) -> Path:
    """``root/{train,val}/n0000000k/*.png``: random RGB, ``size`` wide, ``size - 4 .. size`` high."""
    gen = torch.Generator().manual_seed(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = Path(root) / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h = size - int(torch.randint(0, 5, (), generator=gen))
                pixels = torch.randint(0, 256, (h, size, 3), dtype=torch.uint8, generator=gen)
                Image.fromarray(pixels.numpy()).save(folder / f"img_{i}.png")
    return Path(root)
