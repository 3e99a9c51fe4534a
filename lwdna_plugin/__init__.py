"""lwdna_plugin: dissimilate timm (and mmengine) models into layer-wise different widths (LW-DNA).

The pipeline, one module per stage, as `dissimilate` runs it (`api.py` over `phases.py`):
adapter -> graph -> widen -> score -> budget -> search -> shrink -> export.
"""

__version__ = "0.1.0.dev0"

# First, before anything imports torch: the `lwdna` command's process settings.
from . import command_env  # noqa: F401

# isort: split
from . import cifar_densenet, cifar_resnet
from .adapter import ZOOS, Recipe
from .api import dissimilate
from .budget import RANKINGS, Floors, floor_widths, parse_flops
from .data import load_batches, load_fashion_mnist
from .export import Result, build, load_spec, register_timm
from .flops import FLOP_CONVENTION, FlopModel, count_flops, count_params
from .footprint import Footprint
from .graph import ChannelGroup, GroupGraph
from .grow import GROWERS, BaseGrowFunc
from .kernels import KernelHazard, cpu_kernel_hazards, to_memory_format, training_memory_format
from .latency import LatencyBudget, LatencyModel
from .memory import MicroBatch
from .planner import plan_widths
from .report import Report
from .resize import resize
from .score import CRITERIA, score_channels
from .standalone import export_python
from .warmup import Warmup
from .widen import widen

__all__ = [
    "CRITERIA",
    "FLOP_CONVENTION",
    "GROWERS",
    "ZOOS",
    "BaseGrowFunc",
    "cifar_densenet",
    "cifar_resnet",
    "ChannelGroup",
    "Floors",
    "Footprint",
    "RANKINGS",
    "FlopModel",
    "GroupGraph",
    "KernelHazard",
    "LatencyBudget",
    "LatencyModel",
    "MicroBatch",
    "Recipe",
    "Report",
    "Result",
    "Warmup",
    "build",
    "count_flops",
    "count_params",
    "cpu_kernel_hazards",
    "dissimilate",
    "export_python",
    "floor_widths",
    "load_batches",
    "load_fashion_mnist",
    "load_spec",
    "parse_flops",
    "plan_widths",
    "register_timm",
    "resize",
    "score_channels",
    "to_memory_format",
    "training_memory_format",
    "widen",
]


def __getattr__(name: str):
    # The mmengine integration is optional (`pip install 'lwdna-plugin[mm]'`): import it on first use.
    if name in ("DissimilateHook", "LWDNAModel"):
        from . import mm

        return getattr(mm, name)
    raise AttributeError(f"module 'lwdna_plugin' has no attribute {name!r}")
