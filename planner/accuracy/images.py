"""An image pipeline for real data: images read from disk per batch, in DataLoader workers, with the
standard ImageNet augmentation, instead of one tensor of every image in memory (`planner.accuracy.data`).

    load_image_folder(path, image_size=224, workers=0) -> ImageFolderData
    data.training_set()                 # for planner.accuracy.train: RandomResizedCrop, flip, normalise
    data.batches(split, batch_size)     # a re-iterable DataLoader: resize, centre crop, normalise

Layout as `planner.accuracy.data`: class sub-folders, or `train/`, `val/` (and `calibration/`) each
holding them. The transforms are written with Pillow and torch (torchvision's are the same algorithms,
but importing torchvision fails on this project's CPU torch): RandomResizedCrop draws an area share in
[0.08, 1] and an aspect ratio in [3/4, 4/3] (log-uniform), ten tries, else the centre crop; evaluation
resizes the shorter side to size / 0.875 and takes the centre. The draws of image i in epoch e come
from a generator seeded with (seed, e, i), so a seeded run repeats exactly whatever the number of
workers, and a resumed epoch draws what the interrupted one did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from planner.accuracy.data import SPLIT_FRACTIONS, SPLITS, _open, list_image_folder
from planner.errors import PlannerError

PIPELINE = "imagenet"  # recorded in a checkpoint: evaluate it through this module's transforms
MEAN = {"RGB": (0.485, 0.456, 0.406), "L": (0.449,)}  # ImageNet's, and its average for grey images
STD = {"RGB": (0.229, 0.224, 0.225), "L": (0.226,)}
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
CROP_FRACTION = 0.875  # 224 of 256


def random_resized_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop: area share in SCALE, log-uniform aspect in RATIO."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height  # fallback: the whole image, cut to the nearest allowed aspect ratio
    w, h = (
        (width, height)
        if RATIO[0] <= ratio <= RATIO[1]
        else ((width, round(width / RATIO[0])) if ratio < RATIO[0] else (round(height * RATIO[1]), height))
    )
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def to_tensor(image: Any, mode: str) -> torch.Tensor:
    """A Pillow image as a normalised (C, H, W) float tensor."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    mean = torch.tensor(MEAN[mode]).view(-1, 1, 1)
    std = torch.tensor(STD[mode]).view(-1, 1, 1)
    return (torch.from_numpy(np.ascontiguousarray(array)) - mean) / std


def train_transform(image: Any, size: int, mode: str, rng: np.random.Generator) -> torch.Tensor:
    """RandomResizedCrop to `size`, horizontal flip with probability 1/2, normalise."""
    from PIL import Image, ImageOps

    box = random_resized_box(*image.size, rng)
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    return to_tensor(image, mode)


def eval_transform(image: Any, size: int, mode: str) -> torch.Tensor:
    """Resize the shorter side to size / 0.875, take the centre `size` square, normalise."""
    from PIL import Image

    width, height = image.size
    short = round(size / CROP_FRACTION)
    scale = short / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return to_tensor(image.crop((left, top, left + size, top + size)), mode)


class ImageFiles(torch.utils.data.Dataset):
    """Images read and transformed one at a time (in DataLoader workers); `train` selects augmentation."""

    def __init__(self, files: list[tuple[Path, int]], size: int, mode: str, train: bool, seed: int = 0):
        self.files, self.size, self.mode, self.train, self.seed = files, size, mode, train, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration draws augmentations for (the workers get a copy per epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[index]
        image = _open(path).convert(self.mode)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            return train_transform(image, self.size, self.mode, rng), label
        return eval_transform(image, self.size, self.mode), label


@dataclass(frozen=True)
class ImageFolderData:
    """An image folder read lazily: the interface `planner.accuracy.train` and `evaluate` use."""

    name: str
    classes: tuple[str, ...]
    files: dict[str, list[tuple[Path, int]]]
    input_size: int
    mode: str
    workers: int = 0
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return len(MEAN[self.mode])

    def size(self, split: str) -> int:
        return len(self.files[split])

    def training_set(self) -> ImageFiles:
        return ImageFiles(self.files["train"], self.input_size, self.mode, train=True, seed=self.seed)

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """The split through the evaluation transform, in order (or shuffled by `seed`), re-iterable."""
        if split not in self.files:
            raise PlannerError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        dataset = ImageFiles(self.files[split], self.input_size, self.mode, train=False)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=self.workers
        )


def load_image_folder(
    path: str | Path, image_size: int | None = None, workers: int = 0, seed: int = 0
) -> ImageFolderData:
    """List an image folder (no image is decoded but the first): its classes, files and splits."""
    path = Path(path)
    if not path.is_dir():
        raise PlannerError(f"the image pipeline (--augment) reads an image folder; {path} is not a directory")
    if workers < 0:
        raise PlannerError(f"workers must be 0 or more, got {workers}")
    class_names, files, first_path, mode = list_image_folder(path)
    first = _open(first_path)
    size = image_size or min(first.size)
    if "all" in files:  # no split folders: split it here
        files = _split_files(files["all"])
    return ImageFolderData(
        path.name, tuple(class_names), {s: files.get(s, []) for s in SPLITS}, size, mode, workers, seed
    )


def _split_files(listed: list[tuple[Path, int]]) -> dict[str, list[tuple[Path, int]]]:
    """Every class's files split train / val / calibration by the fractions of `planner.accuracy.data`,
    deterministically (sorted files, fixed seed), so a folder without splits never scores training images."""
    rng = np.random.default_rng(0)
    splits: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
    for label in sorted({label for _, label in listed}):
        mine = [item for item in listed if item[1] == label]
        order = rng.permutation(len(mine))
        n_val = round(len(mine) * SPLIT_FRACTIONS["val"])
        n_cal = round(len(mine) * SPLIT_FRACTIONS["calibration"])
        for rank, i in enumerate(order):
            split = "val" if rank < n_val else "calibration" if rank < n_val + n_cal else "train"
            splits[split].append(mine[i])
    return splits


def check_classes(info: dict[str, Any], classes: tuple[str, ...], where: str) -> None:
    """A checkpoint that names its classes must be given data with the same classes, in the same order."""
    saved = info.get("classes")
    if saved is None or list(saved) == list(classes):
        return
    extra = sorted(set(classes) - set(saved))
    missing = sorted(set(saved) - set(classes))
    detail = (
        f"the data has {extra[:3]} the checkpoint does not and lacks {missing[:3]}"
        if extra or missing
        else "the same names in another order"
    )
    raise PlannerError(
        f"classes of {where} do not match the checkpoint's ({len(classes)} vs {len(saved)}): {detail}"
    )
