"""Datasets for training, evaluation and BN calibration, held in memory as tensors.

    load_dataset(source: str | Path, image_size: int | None = None) -> Dataset
    dataset.batches(split: str, batch_size: int, shuffle: bool = False, seed: int = 0) -> list[Batch]

Sources:
- `digits`: scikit-learn's handwritten digits (1,797 8x8 grey images shipped with scikit-learn, no
  download), split deterministically (stratified, fixed seed) into train 70%, val 20%, calibration 10%.
- `digits-distorted`: a harder digits on which width matters (~94% at 0.25x vs ~96% at 1x, where plain
  digits gives ~98% at every width): each image of each `digits` split three times, randomly rotated
  (up to 30 degrees), scaled (up to 15%), shifted (up to 1/8 of the side) and with Gaussian noise
  (sigma 0.1), drawn by a fixed-seed generator per split. Copies stay in their original's split, so
  nothing of a validation image is trained on.
- a directory of class sub-folders of images (ImageFolder layout, read with Pillow), or one with
  `train/`, `val/` and optionally `calibration/` sub-folders that each hold such class folders.
- an `.npz` file with `x` and `y`, or with explicit splits `x_train`/`y_train`, `x_val`/`y_val`,
  `x_calibration`/`y_calibration` (any subset); an optional `classes` array names the classes.

A source without explicit splits is split like `digits`. With explicit splits, a missing split is empty:
an evaluation-only file has no calibration data, so a configuration that needs calibration is an error.
The calibration split is kept apart from `val` so calibrating never sees the images it is scored on.
Pixels are scaled to [0, 1]; the first BatchNorm absorbs any further affine normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from planner.errors import PlannerError

SPLITS = ("train", "val", "calibration")
SPLIT_FRACTIONS = {"val": 0.2, "calibration": 0.1}
SPLIT_SEED = 0
DISTORTED_COPIES = 3
DISTORTION = {"degrees": 30.0, "scale": 0.15, "shift": 0.125, "noise": 0.1}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Dataset:
    """Images (N, C, H, W float32 in [0, 1]) and labels (N int64) per split."""

    name: str
    classes: tuple[str, ...]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self._any_images().shape[1]

    @property
    def input_size(self) -> int:
        return self._any_images().shape[-1]

    def _any_images(self) -> torch.Tensor:
        return next(x for x, _ in self.splits.values() if len(x))

    def size(self, split: str) -> int:
        return len(self.splits[split][0])

    def training_set(self) -> TensorSplit:
        """The train split for a DataLoader (what `planner.accuracy.train` samples from)."""
        return TensorSplit(*self.splits["train"])

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0) -> list[Batch]:
        """The split cut into batches; shuffled by a generator of its own so runs repeat exactly."""
        if split not in self.splits:
            raise PlannerError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if batch_size < 1:
            raise PlannerError(f"batch size must be at least 1, got {batch_size}")
        x, y = self.splits[split]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if shuffle else None
        if order is not None:
            x, y = x[order], y[order]
        return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def keep_batch(batch: Batch) -> Batch:
    """The DataLoader's collate for `TensorSplit`: `__getitems__` already made the batch."""
    return batch


class TensorSplit(torch.utils.data.Dataset):
    """One in-memory split as a map-style dataset; a DataLoader fetches a whole batch in one indexing."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> Batch:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.x[index], self.y[index]

    collate = staticmethod(keep_batch)


def load_dataset(source: str | Path, image_size: int | None = None) -> Dataset:
    """Read `digits`, an image directory or an `.npz` file; images are resized to `image_size` if given."""
    if str(source) == "digits":
        return _digits(image_size)
    if str(source) == "digits-distorted":
        return _distorted(_digits(image_size))
    path = Path(source)
    if not path.exists():
        raise PlannerError(
            f"dataset {path} does not exist (give a directory, an .npz file, 'digits' or 'digits-distorted')"
        )
    if path.is_dir():
        return _image_folder(path, image_size)
    if path.suffix == ".npz":
        return _npz(path, image_size)
    raise PlannerError(f"dataset {path} is neither a directory nor an .npz file")


def _digits(image_size: int | None) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images[:, None].astype(np.float32) / 16.0
    classes = tuple(str(int(c)) for c in digits.target_names)
    return Dataset("digits", classes, _split(_resized(_as_tensor(x), image_size), digits.target))


def _distorted(dataset: Dataset) -> Dataset:
    splits = {
        name: _distort(x.repeat(DISTORTED_COPIES, 1, 1, 1), y.repeat(DISTORTED_COPIES), seed)
        for seed, (name, (x, y)) in enumerate(dataset.splits.items())
    }
    return Dataset("digits-distorted", dataset.classes, splits)


def _distort(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random rotation, scale and shift per image (one affine resampling), then Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * 2 - 1

    n = len(x)
    angle = uniform(n) * np.radians(DISTORTION["degrees"])
    zoom = 1 + uniform(n) * DISTORTION["scale"]
    shift = uniform(n, 2) * 2 * DISTORTION["shift"]  # affine_grid's coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    moved = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    noisy = moved + DISTORTION["noise"] * torch.randn(moved.shape, generator=generator)
    return noisy.clamp(0.0, 1.0), y


def _split(x: torch.Tensor, y: np.ndarray) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic stratified split (stratified only when every class can appear in every split)."""
    from sklearn.model_selection import train_test_split

    labels = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    index = np.arange(len(labels))
    held_out = SPLIT_FRACTIONS["val"] + SPLIT_FRACTIONS["calibration"]
    counts = np.bincount(labels.numpy())
    stratify = labels.numpy() if counts[counts > 0].min() >= 10 else None
    try:
        train, rest = train_test_split(index, test_size=held_out, random_state=SPLIT_SEED, stratify=stratify)
        share = SPLIT_FRACTIONS["calibration"] / held_out
        rest_labels = None if stratify is None else stratify[rest]
        val, calibration = train_test_split(
            rest, test_size=share, random_state=SPLIT_SEED, stratify=rest_labels
        )
    except ValueError:
        raise PlannerError(f"dataset has {len(labels)} samples: too few to split into {SPLITS}") from None
    return {
        name: (x[part], labels[part]) for name, part in zip(SPLITS, (train, val, calibration), strict=True)
    }


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) with C <= 4 -> float (N, C, H, W) in [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] > 4 and x.shape[-1] <= 4:
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4 or x.shape[1] > 4:
        raise PlannerError(f"images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    if x.shape[-1] != x.shape[-2]:
        raise PlannerError(f"images must be square, got {x.shape[-2]}x{x.shape[-1]}")
    scale = 255.0 if np.issubdtype(x.dtype, np.integer) else 1.0
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / scale)


def _resized(x: torch.Tensor, image_size: int | None) -> torch.Tensor:
    if image_size is None or x.shape[-1] == image_size:
        return x
    if image_size < 1:
        raise PlannerError(f"image size must be positive, got {image_size}")
    return torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)


def _npz(path: Path, image_size: int | None) -> Dataset:
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as error:
        raise PlannerError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    explicit = {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in SPLITS if f"x_{s}" in arrays}
    if not explicit and "x" not in arrays:
        raise PlannerError(f"{path} needs arrays 'x' and 'y' (or x_train/y_train, x_val/y_val, ...)")
    parts = explicit or {"all": (arrays["x"], arrays.get("y"))}
    for name, (x, y) in parts.items():
        suffix = "" if name == "all" else f"_{name}"
        if y is None or len(y) != len(x):
            raise PlannerError(f"{path}: 'y{suffix}' must hold one label per image of 'x{suffix}'")
        if len(x) == 0:
            raise PlannerError(f"{path}: 'x{suffix}' is empty")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise PlannerError(f"{path}: labels 'y{suffix}' must be non-negative integers")
    labels_max = max(int(y.max()) for _, y in parts.values())
    classes = (
        tuple(str(c) for c in arrays["classes"])
        if "classes" in arrays
        else tuple(str(i) for i in range(labels_max + 1))
    )
    if labels_max >= len(classes):
        raise PlannerError(f"{path}: label {labels_max} but only {len(classes)} classes")
    if not explicit:
        x, y = parts["all"]
        return Dataset(path.stem, classes, _split(_resized(_as_tensor(x), image_size), y))
    splits = {}
    for split in SPLITS:
        if split in explicit:
            x, y = explicit[split]
            splits[split] = (_resized(_as_tensor(x), image_size), torch.as_tensor(y, dtype=torch.int64))
    return Dataset(path.stem, classes, _with_empty_splits(splits))


def _with_empty_splits(splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    shape = next(iter(splits.values()))[0].shape[1:]
    empty = (torch.empty((0, *shape)), torch.empty(0, dtype=torch.int64))
    shapes = {tuple(x.shape[1:]) for x, _ in splits.values()}
    if len(shapes) > 1:
        raise PlannerError(f"splits hold images of different shapes: {sorted(shapes)}")
    return {split: splits.get(split, empty) for split in SPLITS}


def list_image_folder(path: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]], Path, str]:
    """An image folder's class names, its (file, label) lists per split folder (or "all"), its first image
    and the mode every image is read in ("L" for grey, else "RGB")."""
    explicit = [s for s in SPLITS if (path / s).is_dir()]
    roots = {s: path / s for s in explicit} if explicit else {"all": path}
    class_names = sorted({c.name for root in roots.values() for c in _class_dirs(root)})
    if not class_names:
        raise PlannerError(f"dataset directory {path} has no class sub-folders of images")
    files = {name: _image_files(root, class_names) for name, root in roots.items()}
    if not any(files.values()):
        raise PlannerError(f"dataset directory {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    first = next(f for listed in files.values() for f, _ in listed)
    mode = "L" if _open(first).mode in ("L", "1", "I", "I;16", "F") else "RGB"
    return class_names, files, first, mode


def _image_folder(path: Path, image_size: int | None) -> Dataset:
    class_names, files, first, mode = list_image_folder(path)
    size = image_size or _open(first).size[0]
    tensors = {name: _read_images(listed, size, mode) for name, listed in files.items() if listed}
    classes = tuple(class_names)
    if "all" in files:  # no split folders: split it here
        x, y = tensors["all"]
        return Dataset(path.name, classes, _split(x, y.numpy()))
    return Dataset(path.name, classes, _with_empty_splits(tensors))


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(root: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    listed = []
    for label, name in enumerate(class_names):
        folder = root / name
        if folder.is_dir():
            images = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            listed.extend((f, label) for f in images)
    return listed


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError) as error:
        raise PlannerError(f"cannot read image {path}: {error}") from None
    return image


def _read_images(listed: list[tuple[Path, int]], size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    arrays = []
    for file, _ in listed:
        image = _open(file).convert(mode)
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    labels = torch.tensor([label for _, label in listed], dtype=torch.int64)
    return torch.from_numpy(x.astype(np.float32) / 255.0), labels
