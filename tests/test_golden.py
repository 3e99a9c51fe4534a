"""Golden specs: the exact `spec.json` of three models at the default settings.

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
    # Scores are float sums; one thread makes their order of summation, and so any tie at the
    # threshold, the same on every machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = lw.dissimilate(name, data=batches, model_kwargs=MODELS[name]).spec
    finally:
        torch.set_num_threads(threads)
    spec = json.loads(json.dumps({k: v for k, v in spec.items() if k != "versions"}))
    path = GOLDEN / f"{name}.json"
    if os.environ.get("LWDNA_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    golden = json.loads(path.read_text())
    changed = sorted(k for k in golden.keys() | spec.keys() if golden.get(k) != spec.get(k))
    assert not changed, f"{name}: spec fields {changed} differ from {path}"
