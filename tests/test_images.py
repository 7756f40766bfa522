"""The image pipeline: images read per batch with ImageNet augmentation, repeatable when seeded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from PIL import Image
from torch.utils.data import DataLoader

from planner.accuracy.evaluate import checkpoint_on_data
from planner.accuracy.images import (
    ImageFolderData,
    eval_transform,
    load_image_folder,
    random_resized_box,
    train_transform,
)
from planner.errors import PlannerError
from planner.nn.checkpoint import read_checkpoint


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 10) -> Path:
    """Small RGB images of assorted sizes; each class a colour, so a model can learn them."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = 20 + i % 5, 16 + i % 3
            pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            pixels[..., label % 3] += 180
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_random_resized_crops_stay_inside_and_keep_area_and_aspect_in_range() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        left, top, right, bottom = random_resized_box(40, 30, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        assert 0.07 <= w * h / 1200 <= 1.0 and 0.7 <= w / h <= 1.4


def test_transforms_give_normalised_crops_of_the_size_asked(tmp_path: Path) -> None:
    image = Image.fromarray(np.full((30, 50, 3), 124, dtype=np.uint8))
    a = train_transform(image, 16, "RGB", np.random.default_rng(5))
    b = train_transform(image, 16, "RGB", np.random.default_rng(5))
    assert a.shape == (3, 16, 16) and torch.equal(a, b)
    centre = eval_transform(image, 16, "RGB")
    assert centre.shape == (3, 16, 16)
    assert abs(float(centre[0].mean()) - (124 / 255 - 0.485) / 0.229) < 1e-3  # ImageNet normalisation


def test_augmentation_repeats_whatever_the_workers_and_changes_with_the_epoch(tmp_path: Path) -> None:
    data = load_image_folder(image_folder(tmp_path / "pets"), image_size=12, seed=3)
    assert data.classes == ("cat", "dog", "fox") and data.in_channels == 3 and data.input_size == 12
    assert (data.size("train"), data.size("val"), data.size("calibration")) == (21, 6, 3)
    train = data.training_set()

    def epoch(e: int, workers: int) -> torch.Tensor:
        train.set_epoch(e)
        return torch.cat([x for x, _ in DataLoader(train, batch_size=8, num_workers=workers)])

    first = epoch(1, 0)
    assert torch.equal(first, epoch(1, 2))
    assert not torch.equal(first, epoch(2, 0))
    val = torch.cat([x for x, _ in data.batches("val", 4)])
    assert torch.equal(val, torch.cat([x for x, _ in data.batches("val", 4)])) and val.shape == (6, 3, 12, 12)


def test_training_on_an_image_folder_and_a_class_mismatch(tmp_path: Path, capsys) -> None:
    pets = image_folder(tmp_path / "pets")
    model = tmp_path / "pets.pt"
    argv = ["train", "s_cnn_small", "-d", str(pets), "-o", str(model), "--augment", "--input-size", "12"]
    code, _, err = run_cli([*argv, "--epochs", "1", "--batch-size", "7", "--workers", "1"], capsys)
    assert code == 0, err
    saved = read_checkpoint(model)
    assert saved["planner"]["pipeline"] == "imagenet"
    on_data = checkpoint_on_data(None, model, str(pets))
    assert isinstance(on_data.dataset, ImageFolderData)  # evaluated as it was trained
    code, out, err = run_cli(["evaluate", "s_cnn_small", "-c", str(model), "-d", str(pets), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset"] == "pets" and report["results"][0]["samples"] == 6  # val through the transform
    other = image_folder(tmp_path / "farm", classes=("cat", "cow", "fox"))
    code, _, err = run_cli(["evaluate", "s_cnn_small", "-c", str(model), "-d", str(other)], capsys)
    assert code == 2
    assert err.strip() == (
        f"error: classes of {other} do not match the checkpoint's (3 vs 3): the data has ['cow'] the "
        "checkpoint does not and lacks ['dog']"
    )
    resume = ["--resume", str(tmp_path / "pets.resume.pt"), "--epochs", "1", "--batch-size", "7"]
    code, _, err = run_cli([*argv[:3], str(other), *argv[4:], *resume], capsys)
    assert code == 2 and "was written for classes = ['cat', 'dog', 'fox']" in err.strip().splitlines()[-1]


def test_the_pipeline_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(PlannerError, match="reads an image folder"):
        load_image_folder(tmp_path / "x.npz")
