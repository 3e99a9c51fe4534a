"""export_python: the LW-DNA model as a plain PyTorch file that loads its state dict and computes the same.

The generated file is imported in a fresh interpreter where `lwdna_plugin` (and timm, when the
file says it does not need it) cannot be imported.
"""

import copy
import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

import lwdna_plugin as lw
from conftest import IMG, core_params
from lwdna_plugin.standalone import export_python, python_source

# Runs in a fresh interpreter: import the generated file with lwdna_plugin blocked, load the
# state dict strictly, compare eval and train outputs (and the running statistics a train
# step updates) with the LW-DNA model's.
CHILD = r"""
import importlib.util, json, sys

sys.modules["lwdna_plugin"] = None
if sys.argv[2] == "block-timm":
    sys.modules["timm"] = None
try:
    import lwdna_plugin  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("lwdna_plugin is importable")
import torch

# The parent's thread count: batch statistics of a train-mode forward are summed in an order
# that depends on it, and the outputs are compared to 1e-5.
torch.set_num_threads(int(sys.argv[3]))
folder = sys.argv[1]
spec = importlib.util.spec_from_file_location("lwdna_generated", folder + "/lwdna_model.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
ref = torch.load(folder + "/reference.pt", weights_only=True)
model = module.MODEL()
model.load_state_dict(torch.load(folder + "/weights.pt", weights_only=True), strict=True)


def close(a, b):
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6)), float((a - b).abs().max())


report = {"timm_imported": sys.modules.get("timm") is not None, "timm_imports": module.TIMM_IMPORTS}
with torch.no_grad():
    report["eval"] = close(model.eval()(ref["x"]), ref["eval"])
    torch.manual_seed(0)
    report["train"] = close(model.train()(ref["x"]), ref["train"])
after = model.state_dict()
report["state_after_train"] = all(close(after[k].double(), v.double())[0] for k, v in ref["after"].items())
print(json.dumps(report))
"""


def assert_ruff_clean(path):
    """The generated file reads like the project's own code: ruff check and ruff format pass
    (ruff is a dev dependency: without it this fails rather than passing unchecked)."""
    common = ["--isolated", "--line-length", "120"]
    for args in (
        ["check", *common, "--select", "E,F,W,I,B,UP", "--target-version", "py310"],
        ["format", *common, "--check"],
    ):
        done = subprocess.run([sys.executable, "-m", "ruff", *args, str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def run_child(folder, block_timm):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(folder),
            "block-timm" if block_timm else "allow-timm",
            str(torch.get_num_threads()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", core_params())
def test_standalone_file_loads_weights_and_matches(name, core_result, tmp_path):
    result = core_result(name)
    path = export_python(result, tmp_path / "lwdna_model.py")
    assert path == tmp_path / "lwdna_model.py"
    source = path.read_text()
    header = source.split('"""')[1]
    assert name in header and f"{result.spec['achieved']['flops']:,}" in header
    # Every model of the core list traces into torch alone: the header says so and the child blocks timm.
    assert "Imports timm: no" in header
    assert "TIMM_IMPORTS = []" in source
    assert "import timm" not in source and "from timm" not in source
    assert_ruff_clean(path)

    model = result.model
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with torch.no_grad():
        evaluated = model.eval()(x)
        trained = copy.deepcopy(model).train()
        torch.manual_seed(0)
        train_out = trained(x)
    torch.save(
        {"x": x, "eval": evaluated, "train": train_out, "after": trained.state_dict()}, tmp_path / "reference.pt"
    )

    report = run_child(tmp_path, block_timm=True)
    assert report["eval"][0], f"eval outputs differ by {report['eval'][1]}"
    assert report["train"][0], f"train outputs differ by {report['train'][1]}"
    assert report["state_after_train"]
    assert not report["timm_imported"] and report["timm_imports"] == []


def _load(path):
    spec = importlib.util.spec_from_file_location(f"lwdna_generated_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spec_dict_and_spec_json_give_the_same_file(resnet18_result, tmp_path):
    result = resnet18_result
    result.save(tmp_path / "run")
    from_result = python_source(result).source
    assert python_source(result.spec).source == from_result
    path = export_python(tmp_path / "run" / "spec.json", tmp_path / "from_spec.py")
    assert path.read_text() == from_result

    module = _load(path)
    model = module.LWDNAResnet18()
    assert type(model) is module.MODEL
    model.load_state_dict(result.model.state_dict(), strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), result.model.eval()(x))


def test_class_name_and_bad_paths(resnet18_result, tmp_path):
    path = export_python(resnet18_result, tmp_path / "nested" / "net.py", class_name="MyNet")
    assert "class MyNet(nn.Module):" in path.read_text()
    assert _load(path).MODEL.__name__ == "MyNet"
    with pytest.raises(ValueError, match="ending in .py"):
        export_python(resnet18_result, tmp_path / "net.txt")
    with pytest.raises(ValueError, match="identifier"):
        python_source(resnet18_result, class_name="not a name")
    with pytest.raises(TypeError, match="Result"):
        python_source(42)


class ResampledPositions(nn.Module):
    """Calls a function timm keeps out of fx tracing: the generated file has to import it from timm."""

    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, 17, 8))
        self.proj = nn.Linear(8, 4)

    def forward(self, x):
        return self.proj(x + resample_abs_pos_embed(self.pos_embed, new_size=[5, 5], num_prefix_tokens=1))


def test_timm_functions_are_imported_and_declared(tmp_path):
    model = ResampledPositions()
    generated = python_source(model)
    assert generated.timm_imports == ["timm.layers.pos_embed.resample_abs_pos_embed"]
    header = generated.source.split('"""')[1]
    assert "Imports timm: yes" in header and "timm.layers.pos_embed.resample_abs_pos_embed" in header
    path = export_python(model, tmp_path / "positions.py")
    assert_ruff_clean(path)
    module = _load(path)
    assert module.TIMM_IMPORTS == generated.timm_imports
    rebuilt = module.MODEL()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 26, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


class TrainOnlyBranch(nn.Module):
    """A Python branch on self.training that fx fixes per trace: the file needs one forward per mode."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        x = self.lin(x)
        if self.training:
            x = x * 2
        return torch.nn.functional.dropout(x, p=0.5, training=self.training)


def test_training_branches_dispatch_on_mode(tmp_path):
    model = TrainOnlyBranch()
    source = python_source(model).source
    assert "def _forward_train(self, x):" in source and "def _forward_eval(self, x):" in source
    path = export_python(model, tmp_path / "branchy.py")
    assert_ruff_clean(path)
    rebuilt = _load(path).MODEL()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(3, 4)
    for mode in (True, False):
        torch.manual_seed(0)
        expected = model.train(mode)(x)
        torch.manual_seed(0)
        assert torch.equal(rebuilt.train(mode)(x), expected)


class LoopedBlocks(nn.Module):
    """A user model whose forward loops over a top-level ModuleList and reads a ModuleDict."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1))
            for _ in range(3)
        )
        self.heads = nn.ModuleDict({"main": nn.Linear(8, 10)})

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.heads["main"](x.mean((2, 3)))


def test_a_forward_that_loops_over_a_module_list_is_written(tmp_path):
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    result = lw.dissimilate(LoopedBlocks(), data=[(x, y)])
    path = export_python(result, tmp_path / "looped.py")
    assert_ruff_clean(path)
    rebuilt = _load(path).MODEL()
    rebuilt.load_state_dict(result.model.state_dict(), strict=True)
    assert torch.allclose(rebuilt.eval()(x), result.model.eval()(x), atol=1e-5)


class SamePadded(nn.Module):
    """timm's TensorFlow-style layers, whose padding depends on the input size."""

    def __init__(self):
        super().__init__()
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

        self.conv = Conv2dSame(3, 8, 3, stride=2)
        self.pool = MaxPool2dSame(3, stride=2)
        self.conv2 = Conv2dSame(8, 16, 5, dilation=2)
        self.avg = AvgPool2dSame(2, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.avg(self.conv2(self.pool(torch.relu(self.conv(x)))))
        return self.fc(x.mean((2, 3)))


def test_same_padded_timm_layers_are_written_as_torch_only_helpers(tmp_path):
    x, y = torch.randn(4, 3, 29, 34), torch.randint(0, 10, (4,))
    result = lw.dissimilate(SamePadded(), data=[(x, y)])
    path = export_python(result, tmp_path / "same.py")
    assert_ruff_clean(path)
    module = _load(path)
    assert module.TIMM_IMPORTS == [] and "class Conv2dSame(nn.Conv2d):" in path.read_text()
    rebuilt = module.MODEL()
    rebuilt.load_state_dict(result.model.state_dict(), strict=True)
    for size in ((29, 34), (32, 32), (17, 40)):  # the padding follows each input's size
        images = torch.randn(2, 3, *size)
        assert torch.allclose(rebuilt.eval()(images), result.model.eval()(images), atol=1e-5)


class VggHead(nn.Module):
    """timm's ConvMlp, which fx cannot trace (it pools inputs smaller than its kernel), between torch layers."""

    def __init__(self):
        super().__init__()
        from timm.models.vgg import ConvMlp

        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pre_logits = ConvMlp(8, 16, kernel_size=3, drop_rate=0.1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.pre_logits(self.stem(x)).mean((2, 3)))


def test_a_layer_fx_cannot_trace_is_copied_with_its_forward(tmp_path):
    model = VggHead().eval()
    path = export_python(model, tmp_path / "vgg_head.py")
    assert_ruff_clean(path)
    source = path.read_text()
    assert "class ConvMlp(nn.Module):" in source and "self.pre_logits.input_kernel_size = 3" in source
    module = _load(path)
    assert module.TIMM_IMPORTS == []
    rebuilt = module.MODEL()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    for size in (8, 2):  # 2x2 is below the kernel: ConvMlp pools it up first
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert torch.equal(rebuilt.eval()(x), model(x))


def _double(x):
    return x * 2


class CallsItsOwnMethod(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.shape[-1] < 4:
            x = self._pad(x)
        return self.fc(x)

    def _pad(self, x):
        return torch.nn.functional.pad(x, (0, 4 - x.shape[-1]))


class UsesALocalFunction(CallsItsOwnMethod):
    def forward(self, x):
        if x.shape[0] > 1:
            x = _double(x)
        return self.fc(x)


class UsesAProperty(CallsItsOwnMethod):
    @property
    def width(self):
        return self.fc.in_features

    def forward(self, x):
        if x.shape[-1] < self.width:
            x = self._pad(x)
        return self.fc(x)


class Pair(nn.Sequential):
    """A subclass of nn.Sequential: its forward is torch's."""


class WithContainers(nn.Module):
    """torch.nn containers inside a copied layer, called and indexed by its forward."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 4)})

    def forward(self, x):
        if x.shape[0] > 1:
            x = self.seq(x)
        return self.heads["a"](x)


def test_a_copied_layer_brings_the_methods_and_containers_its_forward_calls(tmp_path, monkeypatch):
    import timm.layers._fx

    copied = {CallsItsOwnMethod, Pair, WithContainers}
    monkeypatch.setattr(timm.layers._fx, "_leaf_modules", {*timm.layers._fx._leaf_modules, *copied})
    model = nn.Sequential(nn.Linear(4, 3), CallsItsOwnMethod(), Pair(nn.Linear(4, 4), nn.ReLU()), WithContainers())
    model.eval()
    path = export_python(model, tmp_path / "own_method.py")
    source = path.read_text()
    assert "    def _pad(self, x):" in source and "class Pair(nn.Sequential):" in source
    assert_ruff_clean(path)
    rebuilt = _load(path).MODEL().eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize(("layer", "why"), [(UsesAProperty, "self.width"), (UsesALocalFunction, "'_double'")])
def test_a_copy_whose_forward_the_file_could_not_run_is_declined(layer, why, monkeypatch):
    import timm.layers._fx

    monkeypatch.setattr(timm.layers._fx, "_leaf_modules", {*timm.layers._fx._leaf_modules, layer})
    model = nn.Sequential(nn.Linear(4, 4), layer())
    with pytest.raises(ValueError, match=rf"layer '1' .*cannot be copied: .*{re.escape(why)}"):
        python_source(model)


def test_a_root_sequential_is_written_with_its_items_as_attributes(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    ).eval()
    path = export_python(model, tmp_path / "sequential.py")
    assert 'self.add_module("0", nn.Conv2d(3, 8, kernel_size=3))' in path.read_text()
    assert_ruff_clean(path)
    rebuilt = _load(path).MODEL().eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
