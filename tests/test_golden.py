"""Golden specs: the exact `spec.json` of three models at the default settings, and of the
CIFAR DenseNet-40 at the paper's budget.

They pin the pipeline's output while its code is reorganised: a refactor must leave them unchanged.
Only `versions` is left out (it names the installed packages). If a change is meant to alter the
widths found, regenerate them with `LWDNA_UPDATE_GOLDEN=1 pytest tests/test_golden.py` and say why
in the commit.
"""

import json
import os
from pathlib import Path

import pytest
import torch

import lwdna_plugin as lw

GOLDEN = Path(__file__).parent / "golden"

# One plain residual net, one with depthwise convolutions and squeeze-excitation, one transformer.
MODELS = {
    "resnet18": {"num_classes": 10},
    "efficientnet_b0": {"num_classes": 10},
    "vit_tiny_patch16_224": {"num_classes": 10, "img_size": 64},
}


@pytest.mark.parametrize("name", list(MODELS))
def test_spec_matches_golden(name, batches):
    check_golden(name, spec_on_one_thread(name, batches, model_kwargs=MODELS[name]))


def test_cifar_densenet40_at_the_papers_budget_matches_golden():
    # The paper's strongest case at its own budget (0.91 of the FLOPs), on one-channel 28 px data;
    # any width, as steps of 8 cannot thin a 12-channel growth layer above the default floors.
    data = lw.load_batches("mnist5k", batches=1, batch_size=16, img_size=28, in_chans=1)
    kwargs = {"num_classes": 10, "in_chans": 1}
    spec = spec_on_one_thread("cifar_densenet40", data, flops=0.91, round_to=1, model_kwargs=kwargs)
    check_golden("cifar_densenet40", spec)


def spec_on_one_thread(name: str, data, **options) -> dict:
    # Scores are float sums; one thread makes their order of summation, and so any tie at the
    # threshold, the same on every machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = lw.dissimilate(name, data=data, **options).spec
    finally:
        torch.set_num_threads(threads)
    return json.loads(json.dumps({k: v for k, v in spec.items() if k != "versions"}))


def check_golden(name: str, spec: dict) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("LWDNA_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    golden = json.loads(path.read_text())
    changed = sorted(k for k in golden.keys() | spec.keys() if golden.get(k) != spec.get(k))
    assert not changed, f"{name}: spec fields {changed} differ from {path}"
