"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package: the loader, its error, the CLI."""

import gzip

import pytest
import torch

import lwdna_plugin as lw
from conftest import needs_data
from lwdna_plugin.cli import main


@needs_data
def test_fashion_mnist_splits():
    train_x, train_y = lw.load_fashion_mnist("train")
    test_x, test_y = lw.load_fashion_mnist("test")
    assert train_x.shape == (60000, 1, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(train_y.bincount(), torch.full((10,), 6000))
    assert torch.equal(test_y.bincount(), torch.full((10,), 1000))


@needs_data
def test_fashion_mnist_batches_for_scoring():
    batches = lw.load_batches("fashion-mnist", batches=2, batch_size=16, img_size=28, in_chans=1)
    assert [tuple(x.shape) for x, _ in batches] == [(16, 1, 28, 28)] * 2
    assert abs(batches[0][0].mean().item()) < 0.5


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        lw.load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="split='val'"):
        lw.load_fashion_mnist("val", root=tmp_path)


def test_fashion_mnist_reads_idx_files_from_any_root(tmp_path, monkeypatch):
    images = torch.arange(2 * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(2, 28, 28)
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2, 28, 28))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.numpy().tobytes()))
    labels_header = bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels_header + bytes([7, 3])))
    monkeypatch.setenv("LWDNA_FASHION_MNIST", str(tmp_path))
    x, y = lw.load_fashion_mnist("test")
    assert torch.equal(x[:, 0], images) and y.tolist() == [7, 3]


@needs_data
def test_cli_fashion_mnist(tmp_path):
    args = ["dissimilate", "cifar_resnet20", "--data", "fashion-mnist", "--img-size", "28", "--batch-size", "16"]
    assert main([*args, "--out", str(tmp_path), "--quiet"]) == 0
    spec = lw.load_spec(tmp_path / "spec.json")
    assert spec["base"]["name"] == "cifar_resnet20" and spec["base"]["kwargs"]["num_classes"] == 10
