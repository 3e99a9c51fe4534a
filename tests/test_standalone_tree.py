"""standalone.tree: the modules the file recreates, how its code names them, and the `__init__` that builds them."""

import textwrap

import torch
import torch.nn as nn

from lwdna_plugin.standalone.tensors import lifted_constants
from lwdna_plugin.standalone.trace import Traces
from lwdna_plugin.standalone.tree import ModuleTree, safe_attr


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.fc(x) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), nn.Sequential(nn.ReLU(), Block()))
        self.shared = self.blocks[0].fc  # one module under two names
        self.add_module("odd-name", nn.Linear(4, 2))
        self.unused = nn.ReLU()  # neither called nor holding tensors
        self.register_buffer("offset", torch.arange(4.0), persistent=False)

    def forward(self, x):
        return getattr(self, "odd-name")(self.blocks(x + self.offset) + torch.tensor([1.0, 2.0, 3.0, 4.0]))


def tree_of(model):
    traces = Traces.of(model)
    return ModuleTree(model, {}, traces.called(), lifted_constants(model, traces.both))


def build(tree):
    namespace = {"nn": nn, "torch": torch}
    exec("class Rebuilt(nn.Module):\n" + textwrap.indent(tree.init_source(), "    "), namespace)
    return namespace["Rebuilt"]()


def test_the_tree_keeps_what_the_file_needs():
    tree = tree_of(Net())
    assert {"blocks", "blocks.0", "blocks.0.fc", "blocks.1", "blocks.1.0", "shared", "odd-name"} <= tree.kept
    assert "unused" not in tree.kept
    assert tree.lists == {"blocks", "blocks.1"}  # children named 0..n-1 and no tensors of their own
    assert "blocks.0.fc" in tree.leaves and "blocks.0" not in tree.leaves


def test_refs_index_lists_and_spell_odd_names():
    tree = tree_of(Net())
    assert tree.ref("") == "self"
    assert tree.ref("blocks.1.1.fc") == "self.blocks[1][1].fc"
    assert tree.ref("odd-name") == 'getattr(self, "odd-name")'
    assert tree.index_lists('getattr(getattr(self.blocks, "1"), "0")(x)') == "self.blocks[1][0](x)"
    assert tree.index_lists('getattr(self.other, "0")') == 'getattr(self.other, "0")'


def test_init_source_rebuilds_the_state_dict_and_aliases():
    model = Net()
    tree = tree_of(model)
    source = tree.init_source()
    assert "self.shared = self.blocks[0].fc\n" in source
    assert 'self.add_module("odd-name", nn.Linear(4, 2))' in source
    offset = 'self.register_buffer("offset", torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float32), persistent=False)'
    assert offset in source
    rebuilt = build(tree)
    assert rebuilt.shared is rebuilt.blocks[0].fc
    assert isinstance(rebuilt.blocks, nn.ModuleList) and type(rebuilt.blocks[0]) is nn.Module
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(rebuilt.offset, model.offset)
    constant = next(iter(tree.constants))
    assert torch.equal(getattr(rebuilt, constant), torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_substitutes_are_leaves_built_by_their_call():
    model = Net()
    traces = Traces.of(model, frozenset({id(model.blocks[0])}))
    tree = ModuleTree(model, {"blocks.0": "Block()"}, traces.called(), {})
    assert "blocks.0" in tree.leaves and "blocks.0.fc" in tree.inside
    assert "    self.blocks[0] = Block()\n" in tree.init_source()


def test_safe_attr():
    assert safe_attr("conv1")
    assert not safe_attr("odd-name") and not safe_attr("class") and not safe_attr("forward")
