"""mmengine integration: the `LWDNAModel` config type and the `DissimilateHook` Runner hook.

Importing this module registers both with mmengine (MODELS and HOOKS); in a config write
`custom_imports = dict(imports=["lwdna_plugin.mm"])`. The hook dissimilates the Runner's model
on its first training batches before the first iteration, so identification costs nothing
beyond those forward/backward passes; under torch.distributed every rank sums its gate scores
with the others and builds the same architecture.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

try:
    from mmengine.dist import all_gather_object, get_rank, get_world_size
    from mmengine.hooks import EMAHook, Hook
    from mmengine.model import is_model_wrapper
    from mmengine.registry import HOOKS, MODELS
except ModuleNotFoundError as err:
    if err.name is None or not err.name.startswith("mmengine"):
        raise
    raise ImportError(
        "lwdna_plugin.mm needs mmengine, an optional extra: pip install 'lwdna-plugin[mm]' (or pip install mmengine)"
    ) from err

from .adapter import mmengine_recipe, model_device
from .api import DEFAULTS, Result, dissimilate
from .arguments import is_whole
from .budget import Floors
from .export import build, dump_spec

__all__ = ["DissimilateHook", "LWDNAModel"]


def LWDNAModel(base: Mapping[str, Any], spec: str | Path) -> nn.Module:  # noqa: N802 (a config type name)
    """The LW-DNA model that `spec` describes, built from the base model config it was made from.

    In a config: `model = dict(type="LWDNAModel", base=dict(type="MyNet", ...), spec="work_dirs/x/lwdna/spec.json")`.
    """
    return build(spec, base=dict(base))


MODELS.register_module(name="LWDNAModel", module=LWDNAModel)


@HOOKS.register_module()
class DissimilateHook(Hook):
    """Replace the Runner's model by its LW-DNA version before training starts.

    It scores on the Runner's first `batches` training batches, swaps the model (re-wrapping it
    for distributed training), rebuilds the optimizer wrapper and parameter schedulers from the
    config, and writes spec.json, report.md and channels.png to `<work_dir>/<out_dir>`. To
    resume such a run, set the config's model to `LWDNAModel` with the written spec.
    `criterion`, `aggregate`, `ranking` and `inits` are `dissimilate`'s, with its defaults.
    """

    priority = "VERY_HIGH"

    def __init__(
        self,
        width: float = 2.0,
        flops: float | str = 1.0,
        batches: int = 2,
        criterion: str = DEFAULTS["criterion"],
        aggregate: str = DEFAULTS["aggregate"],
        ranking: str = DEFAULTS["ranking"],
        inits: int = DEFAULTS["inits"],
        floor: float = 0.4,
        classifier_floor: float = 0.45,
        min_channels: int = 4,
        round_to: int = DEFAULTS["round_to"],
        seed: int | None = None,
        out_dir: str = "lwdna",
    ) -> None:
        if not is_whole(batches):
            raise ValueError(f"DissimilateHook(batches={batches!r}): score on at least one training batch")
        self.options = {
            "width": width,
            "flops": flops,
            "criterion": criterion,
            "aggregate": aggregate,
            "ranking": ranking,
            "inits": inits,
        }
        self.floors = Floors(floor, classifier_floor, min_channels)
        self.batches, self.round_to, self.seed, self.out_dir = batches, round_to, seed, out_dir
        self.result: Result | None = None

    def before_train(self, runner) -> None:
        model_cfg = runner.cfg.get("model")
        if runner.iter > 0 or (isinstance(model_cfg, Mapping) and model_cfg.get("type") == "LWDNAModel"):
            runner.logger.info("DissimilateHook: the model is already an LW-DNA model (resumed or LWDNAModel); skipped")
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        batches = list(itertools.islice(iter(runner.train_dataloader), self.batches))
        if not batches:
            raise ValueError("DissimilateHook: the Runner's train_dataloader yielded no batches to score on")
        # The config rebuilds the base model on the model's device, so the spec can name its recipe.
        source = dict(model_cfg) if isinstance(model_cfg, Mapping) and mmengine_recipe(model_cfg) else model
        runner.logger.info(f"DissimilateHook: scoring {type(model).__name__} on {len(batches)} training batch(es)")
        result = dissimilate(
            source,
            data=batches,
            batches=len(batches),
            floors=self.floors,
            round_to=self.round_to,
            seed=runner.seed if self.seed is None else self.seed,
            device=model_device(model),
            **self.options,
        )
        device = model_device(model)
        # The Runner holds the only other references to the original model (its wrapper and the
        # optimizer over its parameters), replaced here: drop ours too, so its memory can go.
        del model, source
        runner.model = runner.wrap_model(runner.cfg.get("model_wrapper_cfg"), result.model.to(device))
        self._rebuild_optimisation(runner)
        for hook in runner.hooks:
            if isinstance(hook, EMAHook):
                hook.before_run(runner)
        self._recompile(runner)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        self._save(runner, result)
        self.result = result
        flops = result.report.flops
        runner.logger.info(
            f"DissimilateHook: LW-DNA model with {flops['lwdna']:,} FLOPs ({flops['lwdna'] / flops['original']:.4f} "
            f"of the original) in {sum(result.timings.values()):.1f} s; wrote {Path(runner.work_dir) / self.out_dir}"
        )

    def _recompile(self, runner) -> None:
        """The Runner compiles `train_step` (config `compile`) before `before_train`: the swapped-in
        model's is compiled again the same way, or training would silently run uncompiled."""
        options = runner.cfg.get("compile")
        if not options:
            return
        options = {} if options is True else dict(options)
        runner.model.train_step = torch.compile(runner.model.train_step, **options)
        runner.logger.info("DissimilateHook: compiled the LW-DNA model's train_step as the config's `compile` says")

    def _rebuild_optimisation(self, runner) -> None:
        optim_cfg = runner.cfg.get("optim_wrapper")
        if optim_cfg is None:
            raise RuntimeError(
                "DissimilateHook rebuilds the optimizer from the Runner's config, which has no `optim_wrapper`: "
                "build the Runner with Runner.from_cfg(cfg) or pass cfg=... to Runner(...)"
            )
        runner.optim_wrapper = runner.build_optim_wrapper(copy.deepcopy(optim_cfg))
        runner.scale_lr(runner.optim_wrapper, runner.auto_scale_lr)
        scheduler_cfg = runner.cfg.get("param_scheduler")
        if scheduler_cfg is not None:
            runner.param_schedulers = runner.build_param_scheduler(copy.deepcopy(scheduler_cfg))
        runner.optim_wrapper.initialize_count_status(runner.model, runner.train_loop.iter, runner.train_loop.max_iters)

    def _save(self, runner, result: Result) -> None:
        out = Path(runner.work_dir) / self.out_dir
        if get_rank() == 0:
            result.save(out)
        if get_world_size() == 1:
            return
        out.mkdir(parents=True, exist_ok=True)
        dump_spec(result.spec, out / f"spec.rank{get_rank()}.json")
        digests = all_gather_object(hashlib.sha256(json.dumps(result.spec, sort_keys=True).encode()).hexdigest())
        if len(set(digests)) != 1:
            raise RuntimeError(f"DissimilateHook: ranks found different architectures (spec digests {digests})")
