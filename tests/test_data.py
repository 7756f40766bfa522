"""Datasets: digits splits are deterministic and complete, folders and .npz files load, bad paths named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from planner.accuracy.data import load_dataset
from planner.errors import PlannerError


def test_digits_split_is_deterministic_stratified_and_covers_every_image() -> None:
    first, second = load_dataset("digits"), load_dataset("digits")
    sizes = {split: first.size(split) for split in ("train", "val", "calibration")}
    assert sum(sizes.values()) == 1797
    assert sizes["val"] == 360 and sizes["calibration"] == 180
    for split in sizes:
        assert torch.equal(first.splits[split][0], second.splits[split][0])
        assert set(first.splits[split][1].tolist()) == set(range(10))
    assert (first.num_classes, first.in_channels, first.input_size) == (10, 1, 8)
    images = torch.cat([x for x, _ in first.splits.values()])
    assert images.min() >= 0 and images.max() <= 1
    from sklearn.datasets import load_digits

    expected = np.sort(load_digits().images.reshape(1797, -1) / 16.0, axis=0)
    assert np.allclose(np.sort(images.reshape(1797, -1).numpy(), axis=0), expected)


def test_batches_cover_the_split_and_shuffle_repeatably() -> None:
    dataset = load_dataset("digits")
    batches = dataset.batches("val", 100)
    assert [len(y) for _, y in batches] == [100, 100, 100, 60]
    once = dataset.batches("val", 100, shuffle=True, seed=3)
    again = dataset.batches("val", 100, shuffle=True, seed=3)
    other = dataset.batches("val", 100, shuffle=True, seed=4)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(once, again, strict=True))
    assert not torch.equal(once[0][1], other[0][1])
    assert sorted(torch.cat([y for _, y in once]).tolist()) == sorted(dataset.splits["val"][1].tolist())


def test_digits_resized_for_a_larger_input() -> None:
    assert load_dataset("digits", image_size=16).input_size == 16


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = (
        a.flatten(1) - a.flatten(1).mean(1, keepdim=True),
        b.flatten(1) - b.flatten(1).mean(1, keepdim=True),
    )
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_digits_distorted_holds_three_changed_copies_of_each_image_in_its_own_split() -> None:
    plain, distorted = load_dataset("digits", image_size=16), load_dataset("digits-distorted", image_size=16)
    again = load_dataset("digits-distorted", image_size=16)
    for split, (images, labels) in plain.splits.items():
        copies, copy_labels = distorted.splits[split]
        assert torch.equal(copy_labels, labels.repeat(3))
        assert torch.equal(copies, again.splits[split][0])
        assert copies.min() >= 0 and copies.max() <= 1
        originals = images.repeat(3, 1, 1, 1)
        own = _correlation(originals, copies)
        assert own.max() < 0.99  # every copy is changed
        assert own.mean() > _correlation(originals.roll(1, 0), copies).mean() + 0.1  # ... and still its digit
        assert not torch.equal(copies[: len(images)], copies[len(images) : 2 * len(images)])


def test_npz_with_x_and_y_is_split_and_keeps_its_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(200, 12, 12, 3), dtype=np.uint8)
    y = np.arange(200) % 4
    np.savez(tmp_path / "colour.npz", x=x, y=y)
    dataset = load_dataset(tmp_path / "colour.npz")
    assert (dataset.name, dataset.num_classes, dataset.in_channels, dataset.input_size) == (
        "colour",
        4,
        3,
        12,
    )
    assert sum(dataset.size(s) for s in ("train", "val", "calibration")) == 200
    images, labels = dataset.splits["val"]
    assert images.max() <= 1.0 and images.dtype == torch.float32
    pixel = torch.from_numpy(x.astype(np.float32) / 255).permute(0, 3, 1, 2)
    first = int(torch.nonzero((pixel == images[0]).flatten(1).all(dim=1))[0])
    assert labels[0] == y[first]


def test_npz_with_only_a_val_split_has_no_calibration_data(tmp_path: Path) -> None:
    np.savez(tmp_path / "test.npz", x_val=np.zeros((6, 8, 8), np.float32), y_val=np.array([0, 1, 2, 0, 1, 2]))
    dataset = load_dataset(tmp_path / "test.npz")
    assert dataset.size("val") == 6
    assert dataset.size("calibration") == 0 and dataset.size("train") == 0
    assert dataset.batches("calibration", 4) == []


def _write_images(root: Path, counts: dict[str, int], size: int = 10, mode: str = "L") -> None:
    for index, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            colour = 40 * index if mode == "L" else (40 * index, i, 0)
            Image.new(mode, (size, size), colour).save(root / name / f"{i}.png")


def test_image_folder_reads_classes_in_sorted_order(tmp_path: Path) -> None:
    _write_images(tmp_path / "shapes", {"a_dark": 30, "b_mid": 30, "c_light": 30})
    dataset = load_dataset(tmp_path / "shapes", image_size=8)
    assert dataset.classes == ("a_dark", "b_mid", "c_light")
    assert (dataset.in_channels, dataset.input_size) == (1, 8)
    images, labels = dataset.splits["train"]
    for label in range(3):
        assert torch.allclose(images[labels == label], torch.tensor(40.0 * label / 255), atol=1e-6)


def test_image_folder_with_train_and_val_folders_uses_them(tmp_path: Path) -> None:
    _write_images(tmp_path / "set" / "train", {"cat": 4, "dog": 5}, mode="RGB")
    _write_images(tmp_path / "set" / "val", {"cat": 2, "dog": 1}, mode="RGB")
    dataset = load_dataset(tmp_path / "set")
    assert (dataset.size("train"), dataset.size("val"), dataset.size("calibration")) == (9, 3, 0)
    assert dataset.in_channels == 3 and dataset.splits["val"][1].tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "nowhere", "does not exist"),
        (lambda root: root, "no class sub-folders"),
        (lambda root: (root / "cls").mkdir() or root, "holds no images"),
        (lambda root: np.savez(root / "a.npz", x=np.zeros((4, 8, 8))) or root / "a.npz", "label"),
        (lambda root: (root / "a.txt").write_text("hi") and root / "a.txt", "neither a directory"),
    ],
)
def test_bad_dataset_paths_are_one_line_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(PlannerError, match=message) as error:
        load_dataset(make(tmp_path))
    assert "\n" not in str(error.value)
