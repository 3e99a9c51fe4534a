"""The gate pass on the CPU: float64 where it keeps scores independent of the thread count,
float32 in depthwise convolutions, whose float32 kernel is as deterministic and far faster."""

from functools import partial

import pytest
import timm
import torch

import lwdna_plugin as lw
from conftest import IMG
from lwdna_plugin.adapter import classification_loss


@pytest.fixture(scope="module")
def graph():
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10)
    return lw.GroupGraph(model, torch.zeros(1, 3, IMG, IMG))


def _depthwise_and_pointwise(model):
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = next(m for m in convs if m.groups > 1 and m.groups == m.in_channels)
    pointwise = next(m for m in convs if m.groups == 1 and m.kernel_size == (1, 1))
    return depthwise, pointwise


def test_depthwise_convolutions_run_in_float32_and_the_rest_in_float64(graph, batches):
    depthwise, pointwise = _depthwise_and_pointwise(graph.model)
    seen = {}

    def record(name, module, args):
        seen.setdefault(name, module.weight.dtype)  # the precision its kernel runs in

    hooks = [
        layer.register_forward_pre_hook(partial(record, name))
        for name, layer in (("depthwise", depthwise), ("pointwise", pointwise))
    ]
    try:
        scores = lw.score_channels(graph, "gate", batches, classification_loss)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"depthwise": torch.float32, "pointwise": torch.float64}
    assert all(s.dtype == torch.float32 and torch.isfinite(s).all() for s in scores.values())
    # The model comes back as it was given: float32, no hooks left.
    assert {p.dtype for p in graph.model.parameters()} == {torch.float32}
    assert not depthwise._forward_hooks and not depthwise._forward_pre_hooks


def test_gate_scores_of_a_depthwise_model_are_the_same_on_any_thread_count(graph, batches):
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            runs.append(lw.score_channels(graph, "gate", batches, classification_loss))
    finally:
        torch.set_num_threads(threads)
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][key], runs[1][key]) for key in runs[0])
