"""Adapters between model zoos and the pipeline: build a model, know how to rebuild it, score it.

- `zoo`: recipes and the zoo registry (timm, mmengine), and rebuilding a given model;
- `modules`: copying and unwrapping the caller's module, its device and dtype;
- `batches`: checks of the batches and of the first forward pass, micro-batches;
- `losses`: the default losses (cross-entropy; an mmengine model's own loss).
"""

from .batches import batch_shape, check_batch, check_input, micro_batches
from .losses import check_head, check_logits, classification_loss, default_loss, mmengine_loss, to_device
from .modules import check_model, copy_model, is_mmengine_model, model_device, model_dtype, unwrap
from .zoo import (
    REPLACED_TIMM,
    ZOOS,
    Recipe,
    keep_timm_entrypoint,
    mmengine_recipe,
    mmengine_type,
    recipe_of,
    resolve_model,
)

__all__ = [
    "REPLACED_TIMM",
    "ZOOS",
    "Recipe",
    "batch_shape",
    "check_batch",
    "check_head",
    "check_input",
    "check_logits",
    "check_model",
    "classification_loss",
    "copy_model",
    "default_loss",
    "is_mmengine_model",
    "keep_timm_entrypoint",
    "micro_batches",
    "mmengine_loss",
    "mmengine_recipe",
    "mmengine_type",
    "model_device",
    "model_dtype",
    "recipe_of",
    "resolve_model",
    "to_device",
    "unwrap",
]
