"""torch-pruning's internals: the installed release has every one the package reads, and one
that goes missing is named, with the versions the package was written against."""

import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from lwdna_plugin.graph import internals

PACKAGE = Path(internals.__file__).parents[1]


def test_the_installed_torch_pruning_has_every_internal_the_package_reads():
    internals.check_internals.__wrapped__()


def test_a_missing_internal_is_named_with_the_versions_to_install(monkeypatch):
    monkeypatch.delattr(tp.DependencyGraph, "_build_dependency")
    with pytest.raises(RuntimeError) as err:
        internals.check_internals.__wrapped__()
    message = str(err.value)
    assert "DependencyGraph._build_dependency" in message
    assert f"torch-pruning=={internals.TESTED_VERSIONS[-1]}" in message


def _private_names_of_torch_pruning() -> set[str]:
    """Every private name torch-pruning's modules and graph classes define (not dunders)."""
    owners = [m for m in sys.modules.values() if (m.__name__ or "").startswith("torch_pruning")]
    owners += [tp.DependencyGraph, tp.dependency.Group, tp.dependency.Node, tp.dependency.Dependency]
    names = {n for owner in owners for n in vars(owner) if n.startswith("_") and not n.startswith("__")}
    dg = tp.DependencyGraph().build_dependency(nn.Sequential(nn.Linear(2, 2)), example_inputs=torch.zeros(1, 2))
    # And the fields its objects set on themselves: a graph's, a flatten mapping's.
    instances = [dg, internals.FlattenIndexMapping(stride=2)]
    return names | {n for obj in instances for n in vars(obj) if n.startswith("_") and not n.startswith("__")}


def test_no_other_module_reads_a_private_name_of_torch_pruning():
    names = "|".join(sorted(_private_names_of_torch_pruning()))
    # An attribute read (not on `self`: our own classes have private names too), one by its name
    # in a string (`getattr`), or an import.
    private = re.compile(rf"(?<!\bself)\.({names})\b|[\"']({names})[\"']|import .*\b({names})\b|items\[:\]")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "internals.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line.split("#")[0])
    ]
    assert offenders == []


def test_swap_parameter_moves_the_graphs_name_and_node_to_the_new_parameter():
    model = nn.Sequential(nn.Linear(3, 3))
    model.register_parameter("table", nn.Parameter(torch.zeros(3)))
    dg = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.zeros(1, 3), forward_fn=lambda m, x: m(x) + m.table
    )
    node = dg.module2node[model.table]
    new = nn.Parameter(torch.zeros(5))
    assert internals.swap_parameter(dg, node, new) == "table"
    assert internals.parameter_name(dg, new) == "table"
    assert internals.parameter_name(dg, model.table) is None
    assert dg.module2node[new] is node and node.module is new


def test_drop_items_leaves_the_rest_of_the_group_to_torch_pruning():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3))
    group = dg.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0])
    consumer = [item for item in group.items if item.dep.target.module is model[1]]
    internals.drop_items(group, consumer)
    group.prune()
    assert model[0].out_features == 3
    assert model[1].in_features == 4


def test_the_check_leaves_the_callers_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    internals.check_internals.__wrapped__()
    assert torch.equal(torch.rand(3), expected)
