"""Initialise a resized model the way its zoo initialises a model of that width.

The zoo's constructor is run once more while its layer constructors (conv, linear, norms)
are told the resized shapes, so every init rule the zoo applies (fan-out Kaiming, zero-init
of last norms, truncated normals, ...) sees the new widths. Tensors the constructor does not
create through a layer (class tokens, position embeddings, layer scales, blur filters) are
resampled slice by slice from the zoo's own freshly initialised tensor.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

# Constructor argument names that carry a layer's shape, per patched class.
_SHAPE_ARGS: dict[type, Callable[[nn.Module], dict]] = {
    nn.Conv1d: lambda m: dict(in_channels=m.in_channels, out_channels=m.out_channels, groups=m.groups),
    nn.Conv2d: lambda m: dict(in_channels=m.in_channels, out_channels=m.out_channels, groups=m.groups),
    nn.Conv3d: lambda m: dict(in_channels=m.in_channels, out_channels=m.out_channels, groups=m.groups),
    nn.Linear: lambda m: dict(in_features=m.in_features, out_features=m.out_features),
    nn.BatchNorm1d: lambda m: dict(num_features=m.num_features),
    nn.BatchNorm2d: lambda m: dict(num_features=m.num_features),
    nn.BatchNorm3d: lambda m: dict(num_features=m.num_features),
    nn.LayerNorm: lambda m: dict(normalized_shape=tuple(m.normalized_shape)),
    nn.GroupNorm: lambda m: dict(num_channels=m.num_channels),
}


class _Patched(threading.local):
    """The calling thread's `on_init` while it runs a constructor under `_patched_layers`."""

    on_init: Callable[[nn.Module, type, inspect.BoundArguments], None] | None = None


_ACTIVE = _Patched()
# The patched constructors are installed once for all threads that patch at the same time, and
# removed when the last one is done (`_USERS` counts them; `_LOCK` guards both).
_LOCK = threading.Lock()
_USERS = 0
_ORIGINALS: dict[type, Callable] = {}


def _make(cls: type, original: Callable) -> Callable:
    signature = inspect.signature(original)

    def __init__(self, *args, **kwargs):
        on_init = _ACTIVE.on_init
        if on_init is None:  # another thread, or outside `_patched_layers`: the layer as it was
            return original(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        on_init(self, cls, bound)
        original(*bound.args, **bound.kwargs)

    return __init__


@contextlib.contextmanager
def _patched_layers(on_init: Callable[[nn.Module, type, inspect.BoundArguments], None]) -> Iterator[None]:
    """Call `on_init(layer, cls, bound_args)` before each patched layer constructor runs in this
    thread, until the block ends, by an error too.

    The layer classes' `__init__` is replaced process-wide while any thread is inside such a
    block, but the replacement acts only for the thread that entered it: other threads building
    layers meanwhile get the original constructors' behaviour (thread-safe). A block inside a
    block of the same thread is refused, since the outer one's records would be mixed in.
    """
    global _USERS
    if _ACTIVE.on_init is not None:
        raise RuntimeError("initialise: a zoo constructor re-entered `initialise` (nested constructor patching)")
    with _LOCK:
        if _USERS == 0:
            _ORIGINALS.update({cls: cls.__init__ for cls in _SHAPE_ARGS})
            for cls, original in _ORIGINALS.items():
                cls.__init__ = _make(cls, original)
        _USERS += 1
    _ACTIVE.on_init = on_init
    try:
        yield
    finally:
        _ACTIVE.on_init = None
        with _LOCK:
            _USERS -= 1
            if _USERS == 0:
                for cls, original in _ORIGINALS.items():
                    cls.__init__ = original
                _ORIGINALS.clear()


def _construct(create: Callable[[], nn.Module], shapes: list[dict | None] | None) -> tuple[nn.Module, list]:
    """Run `create()`, recording patched layers in creation order and overriding their shapes."""
    created: list[nn.Module] = []

    def on_init(layer: nn.Module, cls: type, bound: inspect.BoundArguments) -> None:
        override = shapes[len(created)] if shapes is not None and len(created) < len(shapes) else None
        created.append(layer)
        if override:
            for arg, value in override.items():
                if arg in bound.signature.parameters:
                    bound.arguments[arg] = value

    with _patched_layers(on_init):
        model = create()
    return model, created


def _shape_of(module: nn.Module) -> dict | None:
    for cls in type(module).__mro__:
        if cls in _SHAPE_ARGS:
            return _SHAPE_ARGS[cls](module)
    return None


def _resample(source: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Draw whole slices of `source` along each dimension whose size differs.

    Copying slices keeps per-channel structure intact (a blur filter, a gain, a constant layer
    scale) and keeps the distribution of a randomly initialised tensor.
    """
    if source.numel() == 0:
        return torch.zeros(shape, dtype=source.dtype, device=source.device)
    out = source.detach()
    if out.dim() != len(shape):
        return out.flatten()[torch.randint(0, out.numel(), tuple(shape), device=out.device)]
    for dim, (have, want) in enumerate(zip(source.shape, shape, strict=True)):
        if have != want:
            out = out.index_select(dim, torch.randint(0, have, (want,), device=out.device))
    return out


def initialise(model: nn.Module, create: Callable[[], nn.Module] | None) -> nn.Module:
    """Re-initialise `model` in place as `create` (the zoo's constructor) would at its current widths.

    Without a constructor (a plain module), every layer's own `reset_parameters` runs instead.
    """
    if create is None:
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return model
    base, order = _construct(create, None)
    names = {id(m): n for n, m in base.named_modules()}
    targets = dict(model.named_modules())
    shapes = []
    for layer in order:
        target = targets.get(names.get(id(layer), ""))
        shapes.append(_shape_of(target) if target is not None else None)
    try:
        shadow, _ = _construct(create, shapes)
    except (RuntimeError, ValueError, AssertionError) as err:
        # A constructor that runs a forward pass or checks widths cannot be told new shapes.
        logger.info("zoo constructor rejected resized shapes (%s); resampling its initial values", err)
        shadow = base
    reference = dict(base.state_dict())
    reference.update({k: v for k, v in shadow.state_dict().items()})
    own = model.state_dict()
    with torch.no_grad():
        for key, tensor in own.items():
            source = reference.get(key)
            if source is None:
                continue
            value = source if source.shape == tensor.shape else _resample(source, tensor.shape)
            tensor.copy_(value.to(tensor.device, tensor.dtype))
    return model
