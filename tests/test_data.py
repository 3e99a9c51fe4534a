"""Study data read from disk in each format, from tiny files the tests write themselves."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import lwdna_plugin as lw


def write_cifar(folder, kind, per_class=1, seed=0):
    """A tiny CIFAR archive in torchvision's python format: pickled dicts of uint8 rows."""
    rng = np.random.default_rng(seed)
    classes = 10 if kind == "cifar10" else 100
    label_key = b"labels" if kind == "cifar10" else b"fine_labels"
    files = (
        {f"data_batch_{i}": per_class for i in range(1, 6)} | {"test_batch": per_class}
        if kind == "cifar10"
        else {"train": per_class, "test": per_class}
    )
    nested = folder / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    nested.mkdir(parents=True)
    for name, count in files.items():
        labels = [c for c in range(classes) for _ in range(count)]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with (nested / name).open("wb") as handle:
            pickle.dump({b"data": data, label_key: labels}, handle)
    return folder


def write_image_folder(folder, classes=("cat", "dog", "fox"), train=3, val=2, size=(40, 36)):
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name in classes:
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / split / name / f"{i}.png")
    return folder


@pytest.mark.parametrize(("kind", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_in_torchvision_format(tmp_path, kind, classes):
    write_cifar(tmp_path, kind, per_class=2)
    images, labels = lw.data.load_split(f"{kind}:{tmp_path}", "train")
    train_files = 5 if kind == "cifar10" else 1
    assert images.shape == (classes * 2 * train_files, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(torch.bincount(labels), torch.full((classes,), 2 * train_files))
    test, _ = lw.data.load_split(
        f"{kind}:{tmp_path / ('cifar-10-batches-py' if kind == 'cifar10' else 'cifar-100-python')}", "test"
    )
    assert test.shape == (classes * 2, 3, 32, 32)  # the unpacked folder itself works too


def test_a_cifar_folder_without_its_files_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.*test_batch|data_batch_1, data_batch_2"):
        lw.data.load_split(f"cifar10:{tmp_path}", "train")
    with pytest.raises(FileNotFoundError, match="holds train and test"):
        lw.data.load_split(f"cifar100:{tmp_path}", "test")


def test_image_folder_with_train_and_val(tmp_path):
    write_image_folder(tmp_path)
    images, labels = lw.data.load_split(f"imagefolder:{tmp_path}", "train", img_size=16)
    assert images.shape == (9, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    val, val_labels = lw.data.load_split(f"imagefolder:{tmp_path}", "test", img_size=16)
    assert val.shape == (6, 3, 16, 16) and val_labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_image_folder_errors_name_what_is_expected(tmp_path):
    write_image_folder(tmp_path)
    with pytest.raises(ValueError, match="--img-size"):
        lw.data.load_split(f"imagefolder:{tmp_path}", "train")
    flat = tmp_path / "flat"
    (flat / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no val/ folder.*DIR/train/<class>/<image>"):
        lw.data.load_split(f"imagefolder:{flat}", "test", img_size=16)
    with pytest.raises(ValueError, match="choose one of fashion-mnist, cifar10:DIR"):
        lw.data.load_split("cifar10", "train")
