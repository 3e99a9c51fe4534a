"""mmengine: BaseModel scoring through its own loss, LWDNAModel, DissimilateHook, torchrun, examples, CLI."""

import gc
import inspect
import math
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from mmengine.registry import MODELS
from mmengine.runner import Runner

import lwdna_plugin as lw
from lwdna_plugin.cli import main as cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import mmengine_classification as classification  # noqa: E402
import mmengine_restoration as restoration  # noqa: E402

import lwdna_plugin.mm  # noqa: E402, F401


def loader(dataset, batch_size=16):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


@pytest.fixture(scope="module")
def mnist():
    return classification.MNIST5k()


@pytest.fixture(scope="module")
def config_result(mnist):
    # FLOPs alone: at flops 1.0 the default footprint keeps this small net at its own widths.
    # Any width (steps of 8 leave a net this small little room) and FLOPs alone: at flops 1.0 the
    # default footprint keeps it at its own widths.
    config = {"type": "SmallConvNet", "channels": (16, 32, 64)}
    return lw.dissimilate(config, data=loader(mnist), footprint=None, round_to=1)


def test_config_dissimilated_through_its_loss_and_rebuilt(config_result, mnist, tmp_path):
    spec = config_result.spec
    assert spec["base"] == {"zoo": "mmengine", "name": "SmallConvNet", "kwargs": {"channels": [16, 32, 64]}}
    assert 0.99 * spec["original"]["flops"] <= spec["achieved"]["flops"] <= spec["original"]["flops"]
    assert {g["kept"] for g in spec["groups"].values()} != {g["original"] for g in spec["groups"].values()}
    config_result.save(tmp_path)
    rebuilt = lw.build(tmp_path / "spec.json")
    assert lw.export.tensor_shapes(rebuilt) == spec["shapes"]
    batch = next(iter(loader(mnist)))
    losses = rebuilt(**rebuilt.data_preprocessor(batch, True), mode="loss")
    assert math.isfinite(losses["loss"].item())


def test_module_without_recipe_needs_its_base_config(mnist, tmp_path):
    module = classification.SmallConvNet()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result = lw.dissimilate(module, data=loader(mnist), batches=1)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert result.spec["base"] is None
    result.save(tmp_path)
    with pytest.raises(ValueError, match="no zoo recipe"):
        lw.build(tmp_path / "spec.json")
    model = MODELS.build({"type": "LWDNAModel", "base": {"type": "SmallConvNet"}, "spec": str(tmp_path / "spec.json")})
    assert lw.export.tensor_shapes(model) == result.spec["shapes"]


def test_lwdna_model_type_and_wrong_base(config_result, tmp_path):
    config_result.save(tmp_path)
    base = {"type": "SmallConvNet", "channels": (16, 32, 64)}
    model = MODELS.build({"type": "LWDNAModel", "base": base, "spec": str(tmp_path / "spec.json")})
    assert lw.export.tensor_shapes(model) == config_result.spec["shapes"]
    with pytest.raises(ValueError, match="made for base model 'SmallConvNet', not 'TinyDenoiser'"):
        MODELS.build({"type": "LWDNAModel", "base": {"type": "TinyDenoiser"}, "spec": str(tmp_path / "spec.json")})
    with pytest.raises(ValueError, match="features.0"):
        lw.build(tmp_path / "spec.json", base={"type": "SmallConvNet", "channels": (8, 32, 64)})


@MODELS.register_module()
class NoLossNet(classification.SmallConvNet):
    def forward(self, inputs, data_samples=None, mode="tensor"):
        if mode == "loss":
            raise NotImplementedError
        return super().forward(inputs, data_samples, mode)


def test_errors_name_the_problem(mnist):
    with pytest.raises(TypeError, match="NoLossNet.forward has no mode='loss'"):
        lw.dissimilate({"type": "NoLossNet"}, data=loader(mnist))
    with pytest.raises(ValueError, match="yielded no batches"):
        lw.dissimilate({"type": "SmallConvNet"}, data=loader(torch.utils.data.Subset(mnist, [])))
    with pytest.raises(ValueError, match="registry has no type 'Nowhere'"):
        lw.dissimilate({"type": "Nowhere"}, data=loader(mnist))


def test_hook_swaps_model_optimizer_and_schedulers(tmp_path):
    runner = classification.main(["--iters", "4", "--work-dir", str(tmp_path)])
    hook = next(h for h in runner.hooks if isinstance(h, lw.mm.DissimilateHook))
    spec = lw.load_spec(tmp_path / "lwdna" / "spec.json")
    assert hook.result is not None and spec == hook.result.spec
    assert lw.export.tensor_shapes(runner.model) == spec["shapes"]
    params = {id(p) for p in runner.model.parameters()}
    assert {id(p) for group in runner.optim_wrapper.param_groups for p in group["params"]} == params
    assert all(s.optimizer is runner.optim_wrapper for s in runner.param_schedulers)
    assert math.isfinite(runner.message_hub.get_scalar("train/loss").current())
    for name in ("report.md", "channels.png"):
        assert (tmp_path / "lwdna" / name).is_file()


def test_hook_takes_the_identification_options_of_dissimilate(tmp_path):
    cfg = classification.make_config(str(tmp_path), iters=1, ranking="flops", inits=2)
    Runner.from_cfg(cfg).train()
    spec = lw.load_spec(tmp_path / "lwdna" / "spec.json")
    assert (spec["ranking"], spec["inits"]) == ("flops", 2)
    with pytest.raises(ValueError, match=r"DissimilateHook\(batches='2'\)"):
        lw.mm.DissimilateHook(batches="2")


def test_hook_frees_the_original_model_and_keeps_train_step_compiled(tmp_path):
    cfg = classification.make_config(str(tmp_path), iters=2)
    cfg.compile = {"backend": "eager"}  # the Runner compiles train_step before the hook runs
    runner = Runner.from_cfg(cfg)
    original = weakref.ref(runner.model)
    runner.train()
    gc.collect()
    assert original() is None
    # Compiled: `train_step` is the compiled callable set on the LW-DNA model, not its own method.
    compiled = vars(runner.model).get("train_step")
    assert compiled is not None and not inspect.ismethod(compiled)


def test_torchrun_two_ranks_build_the_same_spec(tmp_path):
    # The CPU (gloo) path on any machine: two ranks need two GPUs, which a one-GPU machine lacks.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(EXAMPLES), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    script = [str(EXAMPLES / "mmengine_classification.py"), "--launcher", "pytorch", "--iters", "4"]
    out = subprocess.run(
        [*command, *script, "--work-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    specs = [(tmp_path / "lwdna" / f"spec.rank{r}.json").read_bytes() for r in (0, 1)]
    assert specs[0] == specs[1] == (tmp_path / "lwdna" / "spec.json").read_bytes()
    losses = [
        float(x) for x in re.findall(r"rank \d: LW-DNA model trained 4 iterations, loss ([-\d.e+naif]+)", out.stdout)
    ]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_restoration_example_keeps_image_channels(tmp_path):
    runner = restoration.main(["--iters", "10", "--work-dir", str(tmp_path)])
    model = runner.model
    assert model.head.in_channels == 1 and model.tail.out_channels == 1
    widths = [model.head.out_channels] + [b.conv1.out_channels for b in model.body]
    assert widths != [32] * len(widths)
    spec = lw.load_spec(tmp_path / "lwdna" / "spec.json")
    assert spec["achieved"]["flops"] <= spec["original"]["flops"]
    assert "tail" in spec["fixed_groups"]
    val = restoration.NoisyDigits("val")
    noisy_psnr = -10 * math.log10(torch.nn.functional.mse_loss(val.noisy, val.clean).item())
    assert runner.message_hub.get_scalar("val/psnr").current() > noisy_psnr


def test_cli_mm_config(tmp_path, capsys):
    code = cli(["dissimilate", "--mm-config", str(EXAMPLES / "mmengine_classification_cfg.py"), "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    spec = lw.load_spec(tmp_path / "spec.json")
    assert spec["base"]["name"] == "SmallConvNet" and spec["batch_size"] == 32
    assert cli(["dissimilate", "--mm-config", str(tmp_path / "none.py"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_types_registered_under_a_child_scope_are_found_and_rebuilt(mnist, tmp_path):
    """OpenMMLab codebases register their models in a child registry of their scope (mmpretrain's
    ImageClassifier): the config builds under that default scope, the spec names the scope, and
    `build` finds it again from anywhere."""
    from mmengine.registry import DefaultScope, Registry

    child = Registry("model", parent=MODELS, scope="lwdna_child_scope")
    child.register_module(name="ScopedConvNet", module=classification.SmallConvNet)
    with pytest.raises(ValueError, match="no type 'ScopedConvNet'.*default_scope"):
        lw.dissimilate({"type": "ScopedConvNet"}, data=loader(mnist), batches=1)
    with DefaultScope.overwrite_default_scope("lwdna_child_scope"):
        result = lw.dissimilate({"type": "ScopedConvNet", "channels": (16, 32, 64)}, data=loader(mnist), batches=1)
    assert result.spec["base"]["name"] == "lwdna_child_scope.ScopedConvNet"
    result.save(tmp_path)
    assert lw.export.tensor_shapes(lw.build(tmp_path / "spec.json")) == result.spec["shapes"]


def test_export_python_writes_the_tensor_mode_forward(config_result, tmp_path):
    import importlib.util

    path = lw.export_python(config_result, tmp_path / "small_conv_net.py")
    spec = importlib.util.spec_from_file_location("small_conv_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = module.MODEL().eval()
    rebuilt.load_state_dict(config_result.model.state_dict(), strict=True)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), config_result.model.eval()(x))
    assert "def forward(self, inputs):" in path.read_text()
