"""Adapters between model zoos and the pipeline: build a model, know how to rebuild it, score it.

A `Recipe` names a model in a zoo (`zoo`, `name`, `kwargs`); `ZOOS` maps a zoo name to the
function that builds from it, so a new zoo is one registered function. An `nn.Module` that
came from timm gets a recipe when rebuilding it reproduces every tensor shape; an mmengine
config dict is its own recipe. timm classifiers are scored with cross-entropy on
(images, targets) batches; an mmengine `BaseModel` through its own `data_preprocessor` and
`forward(..., mode='loss')`, on the batches its dataloader yields.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .arguments import check_module
from .data import Batch
from .modes import in_mode

# timm's wrappers of a backbone made with `features_only=True`.
FEATURE_WRAPPERS = tuple(
    getattr(timm.models, name)
    for name in ("FeatureListNet", "FeatureDictNet", "FeatureHookNet", "FeatureGetterNet")
    if hasattr(timm.models, name)
)


# timm's own entrypoints of names that `register_timm(..., overwrite=True)` replaced: a base model
# is always rebuilt by its zoo's constructor, never by the LW-DNA model registered over it.
REPLACED_TIMM: dict[str, Callable[..., nn.Module]] = {}


def _create_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    if name in REPLACED_TIMM:
        return REPLACED_TIMM[name](pretrained=False, **kwargs)
    if name not in timm.list_models():
        raise ValueError(f"timm has no model {name!r} (timm {timm.__version__}); see timm.list_models()")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as err:
        # timm passes unknown keyword arguments on to the model's constructor, which names only itself.
        if "unexpected keyword argument" not in str(err):
            raise
        raise TypeError(f"model_kwargs={kwargs!r}: timm's {name!r} does not take them ({err})") from None


def _create_mmengine(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from mmengine.registry import MODELS

    return MODELS.build({"type": mmengine_type(name), **kwargs})


def mmengine_type(name: str) -> str:
    """`name` as mmengine's root MODELS registry finds it from any scope: OpenMMLab codebases
    (mmpretrain, mmdet, ...) register their types in a child registry of their scope, which the
    root finds only under the scope's prefix (`mmpretrain.ImageClassifier`)."""
    from mmengine.registry import MODELS, DefaultScope

    if MODELS.get(name) is not None:
        return name
    current = DefaultScope.get_current_instance()
    if current is not None:
        with MODELS.switch_scope_and_registry(current.scope_name) as registry:
            if registry.scope != MODELS.scope and registry.get(name) is not None:
                return f"{registry.scope}.{name}"
    scope = f" (default scope {current.scope_name!r})" if current is not None else ""
    raise ValueError(
        f"mmengine's MODELS registry has no type {name!r}{scope}: import the module that registers it, "
        "or set the config's `default_scope` to the codebase that does (e.g. 'mmpretrain')"
    )


ZOOS: dict[str, Callable[[str, dict[str, Any]], nn.Module]] = {"timm": _create_timm, "mmengine": _create_mmengine}


@dataclass(frozen=True)
class Recipe:
    """How to build the base model again: a zoo, a model name and its keyword arguments."""

    zoo: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def create(self) -> nn.Module:
        if self.zoo not in ZOOS:
            raise ValueError(f"unknown model zoo {self.zoo!r}; registered zoos: {sorted(ZOOS)}")
        return ZOOS[self.zoo](self.name, dict(self.kwargs))

    def to_dict(self) -> dict[str, Any]:
        return {"zoo": self.zoo, "name": self.name, "kwargs": dict(self.kwargs)}


def mmengine_recipe(cfg: Mapping[str, Any]) -> Recipe | None:
    """The recipe of an mmengine model config, or None when it cannot be stored as JSON."""
    cfg = dict(cfg)
    name = cfg.pop("type", None)
    if not isinstance(name, str):
        return None
    # Recorded with its scope when a child registry holds it, so `build(spec)` finds it from anywhere.
    name = mmengine_type(name)
    try:
        # Stored as JSON: keep the JSON form (tuples become lists) so the spec round-trips exactly.
        return Recipe("mmengine", name, json.loads(json.dumps(cfg)))
    except TypeError:
        return None


def resolve_model(
    model: str | Mapping[str, Any] | nn.Module, model_kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, Recipe | None]:
    """The caller's model as a fresh module we may change, and its recipe when it has one."""
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise TypeError(
            f"model_kwargs={model_kwargs!r}: give a dict of keyword arguments for building the model, "
            "e.g. {'num_classes': 10}"
        )
    if isinstance(model, str):
        recipe = Recipe("timm", model, dict(model_kwargs or {}))
        return recipe.create(), recipe
    if isinstance(model, Mapping):
        recipe = mmengine_recipe({**model, **(model_kwargs or {})})
        if recipe is None:
            raise TypeError(
                "an mmengine model config needs a registered `type` name and JSON-serialisable arguments "
                f"so that the spec can rebuild it; got type {model.get('type')!r}"
            )
        return recipe.create(), recipe
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a timm model name, an mmengine model config or an nn.Module, got {type(model).__name__}"
        )
    if model_kwargs:
        raise ValueError("model_kwargs apply to a model name; the module you passed is already built")
    model = unwrap(model)
    check_module("dissimilate(model)", model)
    return copy_model(model), recipe_of(model)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of `model`. A tensor a forward pass cached on a module with autograd history
    (EfficientFormer's and EfficientViT's attention-bias caches) cannot be deep-copied: it is
    copied detached instead, leaving the original model as it was."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            items = (
                value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            )
            for item in items:
                if isinstance(item, torch.Tensor) and not item.is_leaf:
                    memo[id(item)] = item.detach().clone()
    return copy.deepcopy(model, memo)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside training wrappers (DistributedDataParallel, DataParallel, mmengine's
    wrappers, `torch.compile`) and weight-averaging copies (torch's AveragedModel, timm's
    ModelEmaV2/V3, mmengine's EMA), whose names and recipe are the model's own."""
    while True:
        if isinstance(model, _wrappers()) or _is_mmengine_wrapper(model):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _wrappers() -> tuple[type, ...]:
    """Module classes that hold the model as `.module`."""
    from timm.utils.model_ema import ModelEmaV2, ModelEmaV3
    from torch.optim.swa_utils import AveragedModel

    found: tuple[type, ...] = (
        nn.parallel.DistributedDataParallel,
        nn.DataParallel,
        AveragedModel,
        ModelEmaV2,
        ModelEmaV3,
    )
    try:
        from mmengine.model import BaseAveragedModel
    except ImportError:
        return found
    return (*found, BaseAveragedModel)


def _is_mmengine_wrapper(model: nn.Module) -> bool:
    try:
        from mmengine.model import is_model_wrapper
    except ImportError:
        return False
    return is_model_wrapper(model)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point dtype of the model's parameters (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def recipe_of(module: nn.Module) -> Recipe | None:
    """A timm recipe that rebuilds `module` with identical tensor shapes, or None."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name or name not in timm.list_models():
        return None
    kwargs = _observed_kwargs(module)
    try:
        rebuilt = Recipe("timm", name, kwargs).create()
    except (TypeError, ValueError, RuntimeError):
        return None
    return Recipe("timm", name, kwargs) if _same_shapes(rebuilt, module) else None


def _observed_kwargs(module: nn.Module) -> dict[str, Any]:
    """The timm keyword arguments a built model still shows: classes, input channels, image size."""
    kwargs: dict[str, Any] = {}
    if hasattr(module, "num_classes"):
        kwargs["num_classes"] = module.num_classes
    first_conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and first_conv.in_channels != 3:
        kwargs["in_chans"] = first_conv.in_channels
    img_size = getattr(getattr(module, "patch_embed", None), "img_size", None)
    if img_size is not None:
        kwargs["img_size"] = list(img_size) if isinstance(img_size, (tuple, list)) else img_size
    # A backbone made with features_only=True (timm's FeatureListNet and kin) keeps its feature
    # maps' indices in `feature_info`; its first layer shows the input channels as above.
    feature_info = getattr(module, "feature_info", None)
    if isinstance(module, FEATURE_WRAPPERS) and feature_info is not None:
        kwargs.pop("num_classes", None)
        kwargs["features_only"] = True
        kwargs["out_indices"] = list(feature_info.out_indices)
    return kwargs


def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def is_mmengine_model(model: nn.Module) -> bool:
    try:
        from mmengine.model import BaseModel
    except ImportError:
        return False
    return isinstance(model, BaseModel)


def batch_shape(model: nn.Module, batch: Any) -> tuple[int, ...]:
    """The (N, C, H, W) shape of a batch's inputs as the model's forward receives them."""
    if not is_mmengine_model(model):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2 or not isinstance(batch[0], torch.Tensor):
            raise ValueError(
                f"each batch of `data` must be an (images, targets) pair of tensors, got {_kind(batch)}: pass a list "
                "of (images, targets) tuples of tensors or a DataLoader that yields them"
            )
        images = batch[0]
        if images.layout != torch.strided:
            raise ValueError(
                f"the images of `data` are a {images.layout} tensor: models compute on dense tensors, pass "
                "images.to_dense()"
            )
        if images.is_meta:
            raise ValueError(
                "the images of `data` are on the 'meta' device (shapes without data): scoring needs real images"
            )
        return tuple(images.shape)
    inputs = model.data_preprocessor(batch, False)["inputs"]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        return (len(inputs), *inputs[0].shape)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"{type(model).__name__}.data_preprocessor gave inputs of type {type(inputs).__name__}; "
            "dissimilation traces the model with one tensor input per sample"
        )
    return tuple(inputs.shape)


def _kind(value: Any) -> str:
    """What a value is, for an error: a tensor with its shape, a tuple or list with its items' kinds."""
    if isinstance(value, torch.Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)) and 0 < len(value) <= 4:
        return f"a {type(value).__name__} of ({', '.join(_qualname(v) for v in value)})"
    return f"a {_qualname(value)}"


def _qualname(value: Any) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__name__}"


def check_batch(batch: Batch, index: int) -> None:
    """A batch for the default classification loss: float images and one class target per image."""
    images, targets = batch[0], batch[1]
    where = f"batch {index} of `data`"
    single = isinstance(targets, int) or (isinstance(targets, torch.Tensor) and targets.dim() == 0)
    if single and images.dim() == 3:
        raise ValueError(
            f"{where} is one sample, an image of shape {tuple(images.shape)} and one target: `data` looks like a "
            "Dataset; pass batches, e.g. torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)"
        )
    if not isinstance(targets, torch.Tensor):
        raise ValueError(
            f"{where}: targets are {_kind(targets)}, not a tensor: the default cross-entropy needs a tensor of "
            "class indices (torch.as_tensor(targets)), or pass loss_fn=<your loss(model, batch)>"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"{where}: images are {images.dtype}, and models compute in floating point: convert them as your "
            "training pipeline does (for example images.float() / 255, then normalise)"
        )
    if targets.dim() == 0 or len(targets) != len(images):
        count = "a single number" if targets.dim() == 0 else f"{len(targets)} target(s)"
        # Images of shape (C, H, W) are most likely one image without its batch axis.
        hint = f"; if {tuple(images.shape)} is one image, add the batch axis: images[None]" if images.dim() == 3 else ""
        raise ValueError(f"{where}: {len(images)} image(s) but {count}: give one target per image{hint}")


def check_model(model: nn.Module) -> None:
    """A model identification can work on: it has parameters, and they hold data."""
    name = type(model).__name__
    parameters = list(model.parameters())
    if not parameters:
        raise ValueError(f"{name} has no parameters: there are no channels to widen or prune")
    quantized = next((n for n, m in model.named_modules() if "quantized" in type(m).__module__.split(".")), None)
    if quantized is not None:
        kind = type(model.get_submodule(quantized)).__name__
        raise ValueError(
            f"{name} is quantized (layer {quantized or '<model>'!r} is {kind}): widths are found on the "
            "floating-point model; dissimilate that, then quantize the LW-DNA model"
        )
    if any(t.is_meta for t in (*parameters, *model.buffers())):
        raise ValueError(
            f"{name} has parameters on the 'meta' device (shapes without data): materialise it first, "
            "e.g. model.to_empty(device='cpu') and initialise or load its weights"
        )


def default_loss(model: nn.Module) -> Callable[[nn.Module, Any], torch.Tensor]:
    return mmengine_loss if is_mmengine_model(model) else classification_loss


def mmengine_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The summed losses of an mmengine `BaseModel`, through its data preprocessor and loss mode."""
    data = model.data_preprocessor(batch, True)
    try:
        losses = model(**data, mode="loss") if isinstance(data, dict) else model(*data, mode="loss")
    except NotImplementedError as err:
        raise TypeError(f"{type(model).__name__}.forward has no mode='loss': scoring needs the model's loss") from err
    if not isinstance(losses, Mapping) or not losses:
        raise TypeError(
            f"{type(model).__name__}.forward(inputs, data_samples, mode='loss') returned "
            f"{type(losses).__name__}, not a dict of losses: scoring needs the model's loss"
        )
    loss, _ = model.parse_losses(dict(losses))
    return loss


def micro_batches(batch: Any, size: int, minimum: int = 1) -> list[tuple[Any, float]]:
    """`batch` cut into pieces of at most `size` samples, each with its share of the batch; a
    last piece under `minimum` samples joins the one before it.

    An (images, targets, ...) tuple is sliced along its first axis; an mmengine batch dict has
    each list or tensor holding one entry per sample sliced alike.
    """
    if isinstance(batch, dict):
        count = len(batch["inputs"])
        per_sample = {k for k, v in batch.items() if isinstance(v, (list, tuple, torch.Tensor)) and len(v) == count}
        cut = lambda lo, hi: {k: (v[lo:hi] if k in per_sample else v) for k, v in batch.items()}  # noqa: E731
    else:
        count = len(batch[0])
        cut = lambda lo, hi: type(batch)(part[lo:hi] for part in batch)  # noqa: E731
    if count <= size:
        return [(batch, 1.0)]
    bounds = list(range(0, count, size)) + [count]
    if len(bounds) > 2 and count - bounds[-2] < minimum:
        del bounds[-2]
    return [(cut(lo, hi), (hi - lo) / count) for lo, hi in itertools.pairwise(bounds)]


def to_device(batch: Batch, device: torch.device, dtype: torch.dtype | None = None) -> Batch:
    """The batch's images and targets on `device` (what follows them in the batch, such as file
    paths, is not read); floating-point images also in `dtype` when given."""
    images, targets = batch[0], batch[1]
    cast = dtype if dtype is not None and images.is_floating_point() else None
    return images.to(device, cast, non_blocking=True), targets.to(device, non_blocking=True)


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of a classifier (or, per position, of a dense predictor) on one batch, on the
    model's device and in its dtype."""
    images, targets = to_device(batch, model_device(model), model_dtype(model))
    logits = model(images)
    if isinstance(logits, (tuple, list)) and logits and logits[0].dim() == 2:
        logits = logits[0]  # a classifier with an auxiliary head returns the main logits first
    check_logits(logits, targets)
    # Class indices of any integer dtype are fine data; torch's cross-entropy takes only int64.
    return F.cross_entropy(logits, targets if targets.is_floating_point() else targets.long())


def check_head(model: nn.Module) -> None:
    """Refuse a model with no classifier (timm's `num_classes=0`) for the default cross-entropy."""
    if getattr(model, "num_classes", None) == 0:
        raise ValueError(
            f"{type(model).__name__} has no classifier (num_classes=0, a headless/pre-training model): the "
            "default loss is cross-entropy of class logits. Pass model_kwargs={'num_classes': N} (a timm name) "
            "or loss_fn=<your loss(model, batch)>"
        )


def check_logits(logits: Any, targets: torch.Tensor) -> None:
    """The default loss's inputs: (N, classes) logits, or dense (N, classes, *positions) logits
    (segmentation), with class indices or class probabilities for each image or position."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"the model returned {shape}, not (batch, classes) logits: the default loss is cross-entropy of "
            "a classifier's output. For a backbone (features_only, num_classes=0) pass loss_fn=<loss(model, batch)>"
        )
    # One class index per image, or per position of dense logits.
    indices = (logits.shape[0], *logits.shape[2:])
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(
                f"targets are {targets.dtype} of shape {tuple(targets.shape)}: the default cross-entropy needs "
                f"class indices (int64, shape {indices}) or class probabilities (float, shape "
                f"{tuple(logits.shape)}). Cast them with targets.long(), or pass loss_fn"
            )
        return
    if targets.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        raise ValueError(f"targets are {targets.dtype}: the default cross-entropy needs int64 class indices")
    if targets.shape != indices and logits.dim() > 2:
        raise ValueError(
            f"the model returned dense logits {tuple(logits.shape)} (batch, classes, positions) and the targets "
            f"have shape {tuple(targets.shape)}: the default cross-entropy needs one class index per position, "
            f"shape {indices}. For a backbone's feature maps, or another loss, pass loss_fn=<loss(model, batch)>"
        )
    if targets.shape != indices:
        raise ValueError(
            f"targets have shape {tuple(targets.shape)}: the default cross-entropy needs one class index per "
            f"image, shape ({logits.shape[0]},). Flatten them with targets.view(-1), or pass loss_fn"
        )
    if targets.numel() and int(targets.min()) < 0:
        raise ValueError(
            f"targets hold the negative class {int(targets.min())}: the default cross-entropy needs class "
            f"indices 0..{logits.shape[1] - 1}; map the labels to those, or pass loss_fn"
        )
    if targets.numel() and int(targets.max()) >= logits.shape[1]:
        raise ValueError(
            f"targets hold classes {int(targets.min())}..{int(targets.max())} but the model has {logits.shape[1]} "
            "classes: pass model_kwargs={'num_classes': N} with N above the largest class"
        )


def check_input(
    model: nn.Module, example: torch.Tensor, batch_shape: tuple[int, ...], input_size: tuple[int, ...] | None = None
) -> None:
    """One forward pass of `example` (a sample shaped like the data, or like `input_size` when
    that is what the caller gave) before anything is traced, so that data the model cannot take
    is named as such, not as a failure deep inside a layer."""
    try:
        with torch.no_grad(), in_mode(model, training=False):
            model(example)
    except (RuntimeError, ValueError, AssertionError) as err:
        # The first conv's input width names the likely cause; it is only a guess, so it is
        # consulted when the forward pass failed (a stem may transform its input first).
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))), None)
        expected = getattr(first, "in_channels", None)
        reason = str(err).splitlines()[0].rstrip(".") if str(err) else type(err).__name__
        if input_size is not None:
            hint = "give one sample's shape"
            if isinstance(first, nn.Conv2d):
                hint = f"give one sample's (channels, height, width), e.g. ({expected}, 224, 224)"
                if len(input_size) == 3 and input_size[0] != expected:
                    channels = input_size[0]
                    hint += f", or build the model for {channels} channels (model_kwargs={{'in_chans': {channels}}})"
            raise ValueError(
                f"input_size={tuple(input_size)!r}: {type(model).__name__} cannot take a sample of this shape "
                f"({reason}); {hint}"
            ) from err
        if isinstance(first, nn.Conv2d) and len(batch_shape) == 4 and batch_shape[1] != expected:
            raise ValueError(
                f"{type(model).__name__} takes {expected}-channel images but the batches are {tuple(batch_shape)} "
                f"({batch_shape[1]} channels): build the model for them "
                f"(model_kwargs={{'in_chans': {batch_shape[1]}}}) or load the data with {expected} channels "
                f"(load_batches(..., in_chans={expected}))"
            ) from err
        if isinstance(first, nn.Conv2d) and len(batch_shape) == 3:
            raise ValueError(
                f"{type(model).__name__} takes batches of images (batch, channels, height, width), got one of shape "
                f"{tuple(batch_shape)} ({reason}): add the batch dimension, e.g. images.unsqueeze(0)"
            ) from err
        raise ValueError(
            f"{type(model).__name__} cannot take inputs of shape {tuple(batch_shape)} (batch, channels, height, "
            f"width): {reason}. Give images of the size the model was built for (timm models take "
            "model_kwargs={'img_size': ...} where they support it)"
        ) from err
