"""Bad input gets a clear error before anything is planned, and failed calls change nothing."""

import json
import re
import subprocess
import sys
import warnings

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lwdna_plugin as lw
from conftest import IMG

TEN = {"num_classes": 10}


def _images(batches):
    return batches[0][0]


def test_wrong_channel_count_names_both_and_the_fix(batches):
    grey = [(_images(batches)[:, :1], batches[0][1])]
    with pytest.raises(ValueError, match=r"3-channel images.*\(8, 1, 64, 64\).*in_chans': 1"):
        lw.dissimilate("resnet18", data=grey, model_kwargs=TEN)


def test_image_size_the_model_cannot_take(batches):
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(8, 3, 64, 64\).*img_size"):
        lw.dissimilate("vit_tiny_patch16_224", data=batches, model_kwargs=TEN)


def test_float_targets_name_their_dtype(batches):
    images, targets = batches[0]
    with pytest.raises(ValueError, match=r"targets are torch.float32 of shape \(8,\).*targets.long\(\)"):
        lw.dissimilate("resnet18", data=[(images, targets.float())], model_kwargs=TEN)


def test_integer_targets_of_any_width_are_class_indices(batches, resnet18_result):
    images, targets = batches[0]
    result = lw.dissimilate("resnet18", data=[(images, targets.int())], model_kwargs=TEN, footprint=None)
    assert result.spec["groups"] == resnet18_result.spec["groups"]


def test_batches_with_more_than_images_and_targets_are_read_for_those_two(batches, resnet18_result):
    images, targets = batches[0]
    paths = [f"image_{i}.png" for i in range(len(targets))]
    result = lw.dissimilate("resnet18", data=[(images, targets, paths)], model_kwargs=TEN, footprint=None)
    assert result.spec["groups"] == resnet18_result.spec["groups"]


def test_targets_with_an_extra_dimension_say_to_flatten_them(batches):
    images, targets = batches[0]
    with pytest.raises(ValueError, match=r"targets have shape \(8, 1\).*shape \(8,\).*targets.view\(-1\)"):
        lw.dissimilate("resnet18", data=[(images, targets[:, None])], model_kwargs=TEN)


def test_targets_beyond_the_classifier(batches):
    with pytest.raises(ValueError, match=r"model has 3 classes.*num_classes"):
        lw.dissimilate("resnet18", data=batches, model_kwargs={"num_classes": 3})


def test_negative_targets_say_that_classes_start_at_zero(batches):
    images, targets = batches[0]
    with pytest.raises(ValueError, match=r"negative class -1: .*class indices 0\.\.9"):
        lw.dissimilate("resnet18", data=[(images, targets - 1 - targets.min())], model_kwargs=TEN)


def test_a_torchscript_model_is_told_to_pass_its_eager_module():
    model = torch.jit.script(timm.create_model("resnet18", pretrained=False, num_classes=10))
    with pytest.raises(
        TypeError, match=r"dissimilate\(model\): the model is a TorchScript module .*the nn.Module it was scripted"
    ):
        lw.dissimilate(model, criterion="synflow", input_size=(3, 32, 32))
    with pytest.raises(TypeError, match=r"GroupGraph\(model, example_inputs\): the model is a TorchScript module"):
        lw.GroupGraph(model, torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match=r"count_flops\(model, inputs\): the model is a TorchScript module"):
        lw.count_flops(model, torch.zeros(1, 3, 32, 32))
    assert lw.count_params(model) == 11_181_642


class DenseNet(torch.nn.Module):
    """A segmentation-style head: per-pixel logits of 5 classes."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.head = torch.nn.Conv2d(16, 5, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.stem(x))))


def test_dense_logits_take_a_class_index_per_pixel(batches):
    images = batches[0][0][:, :, :16, :16]
    masks = torch.randint(0, 5, (len(images), 16, 16), generator=torch.Generator().manual_seed(0))
    result = lw.dissimilate(DenseNet(), data=[(images, masks)])
    assert result.spec["achieved"]["flops"] <= result.spec["target"]["flops"]
    assert result.model(images).shape == (len(images), 5, 16, 16)
    with pytest.raises(ValueError, match=r"dense logits \(8, 5, 16, 16\).*shape \(8,\).*shape \(8, 16, 16\)"):
        lw.dissimilate(DenseNet(), data=[(images, masks[:, 0, 0])])


# torch's eager quantization warns that it is deprecated.
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_a_quantized_model_is_told_to_pass_the_float_one():
    model = torch.ao.quantization.quantize_dynamic(
        timm.create_model("resnet18", pretrained=False, num_classes=10), {torch.nn.Linear}, dtype=torch.qint8
    )
    with pytest.raises(ValueError, match=r"ResNet is quantized \(layer 'fc' is Linear\).*floating-point model"):
        lw.dissimilate(model, criterion="synflow", input_size=(3, 32, 32))


@pytest.mark.parametrize(
    ("convert", "message"),
    [(torch.Tensor.to_sparse, r"sparse_coo tensor.*to_dense"), (lambda t: t.to("meta"), "'meta'")],
)
def test_images_without_dense_data_are_named(batches, convert, message):
    images, targets = batches[0]
    with pytest.raises(ValueError, match=message):
        lw.dissimilate("resnet18", data=[(convert(images), targets)], model_kwargs=TEN)


def test_non_finite_images_stop_before_planning(batches):
    images, targets = batches[0]
    with pytest.raises(ValueError, match="loss on scoring batch 0 is nan.*non-finite"):
        lw.dissimilate("resnet18", data=[(images * float("nan"), targets)], model_kwargs=TEN)


def test_one_sample_batches_batch_norm_refuses_say_to_pass_more(batches):
    # At 32x32 resnet18's last stage is 1x1: its batch norms see one value per channel.
    images, targets = batches[0]
    one = [(images[:1, :, :32, :32], targets[:1])]
    with pytest.raises(ValueError, match=r"scoring batch 0 holds one sample.*Pass scoring batches of 2 or more"):
        lw.dissimilate("resnet18", data=one, model_kwargs=TEN)


def test_non_finite_scores_are_refused():
    graph = lw.GroupGraph(timm.create_model("resnet18", num_classes=10), torch.zeros(1, 3, IMG, IMG))

    def broken(group):
        return torch.full((len(group[0].idxs),), float("inf"))

    with pytest.raises(ValueError, match="non-finite scores"):
        lw.score_channels(graph, broken)


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("round_to", 0, "round_to=0: must be a positive integer"),
        ("round_to", 2.5, "round_to=2.5: must be a positive integer"),
        ("batches", -1, "batches=-1: must be a positive integer"),
        ("inits", 0, "inits=0: must be a positive integer"),
        ("width", 0.5, "width=0.5: the widening factor must be a number of at least 1"),
        ("width", float("nan"), "width=nan"),
        ("seed", "one", "seed='one': must be an integer"),
        ("flops", -0.5, "flops=-0.5: must be positive"),
        ("flops", float("inf"), "flops=inf: must be positive"),
        ("ranking", "knapsack", "ranking='knapsack': choose one of"),
    ],
)
def test_numeric_arguments_are_checked(batches, argument, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        lw.dissimilate("resnet18", data=batches, model_kwargs=TEN, **{argument: value})


@pytest.mark.parametrize("floors", [{"rho": 1.5}, {"tau": -0.1}, {"min_channels": 0}, {"rho": "0.4"}])
def test_floors_are_checked(floors):
    with pytest.raises(ValueError, match=f"Floors\\({next(iter(floors))}="):
        lw.Floors(**floors)


def test_a_width_whose_widened_model_cannot_fit_in_memory_is_refused(batches):
    with pytest.raises(ValueError, match=r"width=1000: widening ResNet \(11.2 M parameters\).*lower `width`"):
        lw.dissimilate("resnet18", width=1000, data=batches, model_kwargs=TEN)


def test_target_above_the_widened_model_warns_with_both_numbers(batches):
    with pytest.warns(
        UserWarning, match=r"FLOP target [\d,]+ is above the widened model's [\d,]+ FLOPs.*Raise `width`"
    ):
        result = lw.dissimilate("resnet18", width=2.0, flops=9.0, data=batches, model_kwargs=TEN, footprint=None)
    assert all(g["kept"] == g["widened"] for g in result.spec["groups"].values())


def test_headless_model_with_the_default_loss(batches):
    with pytest.raises(ValueError, match=r"no classifier \(num_classes=0.*loss_fn"):
        lw.dissimilate("resnet18", data=batches, model_kwargs={"num_classes": 0})


def test_backbone_output_with_the_default_loss(batches):
    with pytest.raises(ValueError, match=r"returned list, not \(batch, classes\) logits.*loss_fn"):
        lw.dissimilate("resnet18", data=batches, model_kwargs={"features_only": True})


def test_features_only_backbone_records_its_recipe(batches, tmp_path):
    backbone = timm.create_model("resnet18", features_only=True, out_indices=(2, 3))

    def loss(model, batch):
        return sum(f.float().pow(2).mean() for f in model(batch[0]))

    result = lw.dissimilate(backbone, data=batches, loss_fn=loss)
    assert result.spec["base"]["kwargs"] == {"features_only": True, "out_indices": [2, 3]}
    result.save(tmp_path)
    rebuilt = lw.build(tmp_path)  # no base module needed
    assert [f.shape[1] for f in rebuilt(torch.zeros(1, 3, IMG, IMG))] == [
        f.shape[1] for f in result.model(torch.zeros(1, 3, IMG, IMG))
    ]


def test_corrupt_spec_names_the_file(resnet18_result, tmp_path):
    resnet18_result.save(tmp_path)
    path = tmp_path / "spec.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(ValueError, match=f"{path}.*not valid JSON"):
        lw.build(path)


def test_unknown_schema_says_which_it_reads(resnet18_result):
    with pytest.raises(ValueError, match="schema 'lwdna-spec/9'.*reads lwdna-spec/1"):
        lw.build({**resnet18_result.spec, "schema": "lwdna-spec/9"})


def test_register_timm_refuses_a_timm_name_and_never_recurses(resnet18_result, tmp_path):
    resnet18_result.save(tmp_path)
    with pytest.raises(
        ValueError, match="timm already has a model named 'resnet18'.*such as 'resnet18_lwdna'.*overwrite=True"
    ):
        lw.register_timm(tmp_path, name="resnet18")
    assert timm.create_model("resnet18", num_classes=10).conv1.out_channels == 64  # timm's own, untouched
    # Overwriting is only done on request, and then in a fresh process: it changes timm for the process.
    script = f"""
import timm, lwdna_plugin as lw
lw.register_timm({str(tmp_path)!r}, name="resnet18", overwrite=True)
model = timm.create_model("resnet18", num_classes=10)
print(model.conv1.out_channels, lw.build({str(tmp_path)!r}).conv1.out_channels)
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout.split()
    assert out == [str(resnet18_result.model.conv1.out_channels)] * 2


def test_mm_without_mmengine_names_the_extra():
    # A process where importing mmengine fails, as after a plain `pip install lwdna-plugin`.
    script = """
import sys
sys.modules["mmengine"] = None
try:
    import lwdna_plugin.mm
except ImportError as err:
    print(type(err).__name__, err)
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert out.startswith("ImportError") and "pip install 'lwdna-plugin[mm]'" in out


def test_save_is_atomic_and_refuses_a_file(resnet18_result, tmp_path):
    target = tmp_path / "run"
    target.write_text("not a folder")
    with pytest.raises(FileExistsError, match="is a file"):
        resnet18_result.save(target)
    folder = resnet18_result.save(tmp_path / "ok")
    assert sorted(p.name for p in folder.iterdir()) == ["channels.png", "report.md", "spec.json"]  # no temporaries

    def interrupted(path):
        path.write_text('{"trunc')
        raise KeyboardInterrupt

    from lwdna_plugin.export import atomic_write

    before = (folder / "spec.json").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        atomic_write(folder / "spec.json", interrupted)
    assert (folder / "spec.json").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["channels.png", "report.md", "spec.json"]


def _mutations(spec):
    """(description, mutate(spec dict) -> spec dict) for drop / retype / negate / reorder."""
    fields = ["schema", "base", "input_size", "groups", "shapes", "ignored", "versions"]
    group = sorted(spec["groups"])
    values = st.sampled_from([None, "x", -3, 0, 2.5, [], {}, True, [1, -1], {"a": 1}])
    drop = st.sampled_from(fields).map(lambda f: ("drop " + f, lambda s: {k: v for k, v in s.items() if k != f}))
    retype = st.tuples(st.sampled_from(fields), values).map(
        lambda t: (f"retype {t[0]}={t[1]!r}", lambda s: {**s, t[0]: t[1]})
    )

    def set_entry(key, field, value):
        return lambda s: {**s, "groups": {**s["groups"], key: {**s["groups"][key], field: value}}}

    entry = st.tuples(st.sampled_from(group), st.sampled_from(["original", "kept"]), values | st.integers(-5, 10**6))
    entries = entry.map(lambda t: (f"groups.{t[0]}.{t[1]}={t[2]!r}", set_entry(*t)))
    negate = st.sampled_from(group).map(lambda k: (f"negate {k}", set_entry(k, "kept", -spec["groups"][k]["kept"])))
    swap = st.tuples(st.sampled_from(group), st.sampled_from(group)).map(
        lambda t: (
            f"swap {t}",
            lambda s: {
                **s,
                "groups": {
                    **s["groups"],
                    t[0]: s["groups"][t[1]],
                    t[1]: s["groups"][t[0]],
                },
            },
        )
    )
    reverse = st.just(("reverse order", lambda s: {k: s[k] for k in reversed(list(s))}))
    size = st.lists(st.integers(-2, 300), min_size=1, max_size=4).map(
        lambda v: (f"input_size={v}", lambda s: {**s, "input_size": v})
    )
    return drop | retype | entries | negate | swap | reverse | size


def _clear(err, *names):
    text = str(err)
    return any(n in text for n in names)


@pytest.fixture(scope="module")
def spec_file(resnet18_result, tmp_path_factory):
    return resnet18_result.save(tmp_path_factory.mktemp("fuzz")) / "spec.json"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_specs_build_or_name_the_problem(spec_file, data):
    spec = json.loads(spec_file.read_text())
    name, mutate = data.draw(_mutations(spec))
    mutated = mutate(spec)
    path = spec_file.with_name("mutated.json")
    path.write_text(json.dumps(mutated))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = lw.build(path)
        except (ValueError, KeyError, TypeError) as err:
            assert _clear(err, str(path), "field", "spec", "schema", "layer"), (name, err)
            return
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == mutated["shapes"], name


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999))
def test_truncated_spec_files_name_the_file(spec_file, cut):
    text = spec_file.read_text()
    path = spec_file.with_name("truncated.json")
    path.write_text(text[: int(cut * len(text))])
    with pytest.raises(ValueError, match="not valid JSON|field|schema") as err:
        lw.build(path)
    assert str(path) in str(err.value)


def test_a_failed_call_leaves_the_callers_model_and_timm_alone(batches):
    model = timm.create_model("resnet18", num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    registered = set(timm.list_models())
    images, targets = batches[0]
    with pytest.raises(ValueError):
        lw.dissimilate(model, data=[(images * float("nan"), targets)])
    with pytest.raises(ValueError):
        lw.dissimilate(model, data=batches, round_to=0)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(timm.list_models()) == registered


@pytest.mark.parametrize("argument", [{"batches": 0}, {"batch_size": -1}, {"img_size": 0}, {"in_chans": 0}])
def test_load_batches_checks_its_numbers(argument):
    name, value = next(iter(argument.items()))
    with pytest.raises(ValueError, match=f"load_batches\\({name}={value}\\): must be a positive integer"):
        lw.load_batches("mnist5k", **argument)


@pytest.mark.parametrize("size", [(16, 0), (16, 24, 3), "16x24", (16.0, 24)])
def test_load_batches_takes_one_size_or_height_and_width(size):
    with pytest.raises(ValueError, match=r"load_batches\(img_size=.*\): must be .* or \(height, width\)"):
        lw.load_batches("mnist5k", img_size=size)
    images, _ = lw.load_batches("mnist5k", batches=1, batch_size=2, img_size=(16, 24))[0]
    assert images.shape == (2, 3, 16, 24)


@pytest.mark.parametrize("device", ["gpu0", "cuda:0" if not torch.cuda.is_available() else "tpu"])
def test_device_that_torch_cannot_use(batches, device):
    with pytest.raises(ValueError, match=f"device='{device}'"):
        lw.dissimilate("resnet18", data=batches, model_kwargs=TEN, device=device)


def test_batches_that_are_not_pairs(batches):
    with pytest.raises(
        ValueError, match=r"\(images, targets\) pair of tensors, got a Tensor of shape \(8, 3, 64, 64\)"
    ):
        lw.dissimilate("resnet18", data=[batches[0][0]], model_kwargs=TEN)


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (lambda model, batch: model(batch[0]).sum(1), r"a tensor of shape \(8,\)"),
        (lambda model, batch: 1.0, "returned float"),
        (lambda model, batch: torch.tensor(1.0), "with no grad"),
    ],
)
def test_loss_fn_must_give_one_scalar_with_a_graph(batches, loss, message):
    with pytest.raises(ValueError, match=message + ".*one scalar loss"):
        lw.dissimilate("resnet18", data=batches, model_kwargs=TEN, loss_fn=loss)


def test_a_model_with_no_group_that_can_change_keeps_its_architecture(batches):
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    every_layer = [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with pytest.warns(
        UserWarning,
        match=r"only 0% of resnet18's channels can change width \(0 of 13 groups\): the result keeps the original "
        r"architecture\. Main reasons: ignored \([\d,]+ channels: you asked for it with `ignore`\)",
    ):
        result = lw.dissimilate(model, data=batches, ignore=every_layer)
    assert result.spec["groups"] == {}
    assert lw.export.tensor_shapes(result.model) == lw.export.tensor_shapes(model)


def test_a_stem_that_transforms_its_input_is_not_taken_for_a_channel_mismatch():
    """The first conv reads 12 channels of a space-to-depth view of 3-channel images: the input
    check runs the model before it guesses at channel counts."""

    class SpaceToDepth(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(12, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.conv(torch.nn.functional.pixel_unshuffle(x, 2)).mean((-2, -1)))

    batches = lw.load_batches("mnist5k", batches=1, batch_size=8, img_size=16)
    result = lw.dissimilate(SpaceToDepth(), data=batches)
    assert result.spec["groups"]["conv"]["original"] == 16


def test_batches_of_numpy_arrays_name_the_types(batches):
    images, targets = batches[0]
    with pytest.raises(ValueError, match=r"got a tuple of \(numpy.ndarray, numpy.ndarray\).*tuples of tensors"):
        lw.dissimilate("resnet18", data=[(images.numpy(), targets.numpy())], model_kwargs=TEN)
    with pytest.raises(ValueError, match=r"batch 0 of `data`: targets are a numpy.ndarray, not a tensor"):
        lw.dissimilate("resnet18", data=[(images, targets.numpy())], model_kwargs=TEN)


def test_integer_images_say_to_convert_them(batches):
    images, targets = batches[0]
    raw = (images * 60 + 128).clamp(0, 255).to(torch.uint8)
    with pytest.raises(ValueError, match=r"batch 0 of `data`: images are torch.uint8.*images.float\(\) / 255"):
        lw.dissimilate("resnet18", data=[(raw, targets)], model_kwargs=TEN)


def test_every_batch_needs_one_target_per_image(batches):
    images, targets = batches[0]
    with pytest.raises(ValueError, match=r"batch 1 of `data`: 8 image\(s\) but 5 target\(s\)"):
        lw.dissimilate("resnet18", data=[(images, targets), (images, targets[:5])], model_kwargs=TEN)
    with pytest.raises(ValueError, match=r"3 image\(s\) but 1 target\(s\).*is one image, add the batch axis"):
        lw.dissimilate("resnet18", data=[(images[0], targets[:1])], model_kwargs=TEN)


def test_a_model_without_parameters_or_with_meta_ones():
    with pytest.raises(ValueError, match="Sequential has no parameters"):
        lw.dissimilate(torch.nn.Sequential(torch.nn.ReLU()), criterion="synflow", input_size=(3, 8, 8))
    meta = timm.create_model("resnet18", pretrained=False, num_classes=10).to("meta")
    with pytest.raises(ValueError, match=r"ResNet has parameters on the 'meta' device.*to_empty"):
        lw.dissimilate(meta, criterion="synflow", input_size=(3, 32, 32))


@pytest.mark.parametrize("ignore", [["layer1.0.conv"], "layer1.0.conv"])
def test_ignored_layers_must_exist(batches, ignore):
    with pytest.raises(ValueError, match=r"ignore: ResNet has no layer 'layer1.0.conv'; did you mean 'layer1.0.conv"):
        lw.dissimilate("resnet18", data=batches, model_kwargs=TEN, ignore=ignore)


@pytest.mark.parametrize("size", [(3, -4, 32), "3x32x32", (3.0, 32, 32), ()])
def test_input_size_is_checked(size):
    with pytest.raises(ValueError, match=r"input_size=.*positive integers, e.g. \(3, 224, 224\)"):
        lw.dissimilate("resnet18", criterion="synflow", input_size=size, model_kwargs=TEN)


@pytest.mark.parametrize(("size", "fix"), [((32, 32), r"\(channels, height, width\)"), ((1, 32, 32), "in_chans': 1")])
def test_an_input_size_the_model_cannot_take_names_input_size(size, fix):
    with pytest.raises(ValueError, match=rf"input_size={re.escape(str(size))}: ResNet cannot take .*{fix}"):
        lw.dissimilate("resnet18", criterion="synflow", input_size=size, model_kwargs=TEN)


def test_unknown_model_kwargs_name_the_model():
    with pytest.raises(TypeError, match=r"model_kwargs=\{'depth': 3\}: timm's 'resnet18' does not take them"):
        lw.dissimilate("resnet18", criterion="synflow", input_size=(3, 32, 32), model_kwargs={"depth": 3})


def test_a_large_round_to_is_named_when_it_lifts_the_floors(batches):
    # Floors stop at the original widths, so steps of 512 keep every group at its own width at best.
    with pytest.raises(ValueError, match=r"round_to=512\): this call can reach 1\.000-.* with round_to=1 reaches it"):
        lw.dissimilate("resnet18", data=batches, flops=0.5, model_kwargs=TEN, round_to=512)


def test_importing_the_package_warns_about_nothing():
    code = "import warnings; warnings.simplefilter('error'); import lwdna_plugin"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_helpers_name_bad_arguments():
    with pytest.raises(TypeError, match="spec: give a spec dict, a spec.json path or the folder holding it, not a int"):
        lw.build(3)
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(TypeError, match=r"count_flops\(model, inputs\): the model must be an nn.Module, got str 're"):
        lw.count_flops("resnet18", x)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    for call, where in (
        (lambda: lw.count_params("resnet18"), r"count_params\(model\)"),
        (lambda: lw.GroupGraph("resnet18", x), r"GroupGraph\(model, example_inputs\)"),
        (lambda: lw.widen(model, "x"), r"widen\(model, example_inputs\): the example inputs must be a tensor"),
        (lambda: lw.resize(model, {"conv1": 8}), r"resize\(graph, widths\): graph must be a GroupGraph"),
        (lambda: lw.resize(lw.GroupGraph(model, x), [8]), r"widths must map group keys to channel counts"),
        (lambda: lw.LatencyBudget(ratio="fast"), r"LatencyBudget\(ratio='fast'\): must be a finite number"),
        (lambda: lw.LatencyBudget(batch_sizes=32), r"LatencyBudget\(batch_sizes=32\): give a tuple"),
    ):
        with pytest.raises(TypeError, match=where):
            call()
    with pytest.raises(ValueError, match=r"width='2': must be a positive number"):
        lw.widen(model, x, "2")
    with pytest.raises(ValueError, match=r"channel group 'conv1': width 8.0 must be a whole number"):
        lw.resize(lw.GroupGraph(model, x), {"conv1": 8.0})
    with pytest.raises(ValueError, match=r"3-channel images but the batches are \(1, 1, 32, 32\)"):
        lw.count_flops(model, torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"got one of shape \(3, 32, 32\).*add the batch dimension"):
        lw.count_flops(model, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"MicroBatch\(size=0\): must be a positive integer or None"):
        lw.MicroBatch(0)


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("floors", 0.4, r"floors=0.4: give a `Floors\(rho=..."),
        ("latency", "fast", r"latency='fast': give the slowest allowed time as a ratio"),
        ("model_kwargs", [("num_classes", 10)], r"model_kwargs=\[\('num_classes', 10\)\]: give a dict"),
    ],
)
def test_arguments_of_the_wrong_type_say_what_to_give(batches, argument, value, message):
    kwargs = {"model_kwargs": TEN, argument: value}
    with pytest.raises(TypeError, match=message):
        lw.dissimilate("resnet18", data=batches, **kwargs)


def test_a_dataset_of_single_samples_is_told_to_use_a_dataloader(batches):
    images, targets = batches[0]
    dataset = torch.utils.data.TensorDataset(images, targets)
    with pytest.raises(ValueError, match=r"batch 0 of `data` is one sample.*looks like a Dataset.*DataLoader"):
        lw.dissimilate("resnet18", data=dataset, model_kwargs=TEN)
    samples = [(image, int(target)) for image, target in zip(images, targets, strict=True)]
    with pytest.raises(ValueError, match=r"one sample, an image of shape \(3, 64, 64\)"):
        lw.dissimilate("resnet18", data=samples, model_kwargs=TEN)
    result = lw.dissimilate(
        "resnet18", data=torch.utils.data.DataLoader(dataset, batch_size=4), batches=1, model_kwargs=TEN
    )
    assert result.spec["groups"]


def test_a_layer_that_computes_nan_from_finite_images_is_named(batches):
    images, targets = batches[0]
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    # weight_norm divides each output channel by its norm: a widened channel's zero weights give 0/0.
    model.layer2[0].conv1 = torch.nn.utils.parametrizations.weight_norm(model.layer2[0].conv1)
    with pytest.raises(
        ValueError, match=r"images are finite: layer 'layer2.0.conv1' of the widened model.*weight_norm"
    ):
        lw.dissimilate(model, data=[(images, targets)])
    result = lw.dissimilate(model, data=[(images, targets)], ignore=["layer2.0.conv1"])
    assert torch.isfinite(result.model(images)).all()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_called_where_autograd_is_off_it_identifies_the_same(batches, resnet18_result, context):
    with context():
        result = lw.dissimilate("resnet18", data=batches, model_kwargs=TEN, footprint=None)
    assert result.spec["groups"] == resnet18_result.spec["groups"]


def test_an_unreachable_flop_target_is_refused_before_scoring_with_the_reachable_range():
    data = lw.load_batches("mnist5k", batches=1, batch_size=16, img_size=28, in_chans=1)
    scored = []

    def criterion(group):  # a custom score: called only if scoring starts
        scored.append(group)
        return torch.ones(len(group[0].idxs))

    kwargs = {"num_classes": 10, "in_chans": 1}
    with pytest.raises(
        ValueError,
        match=r"0\.500 of the original at input 1x28x28\).*reach 0\.960-3\.97\d.*Floors\(rho=0\.2, tau=0\.2\)",
    ):
        lw.dissimilate("cifar_resnet20", flops=0.5, data=data, criterion=criterion, model_kwargs=kwargs)
    assert scored == []
    # DenseNet-40's 12-channel growth layers in steps of 8 stay at their 12 channels at the least.
    with pytest.raises(ValueError, match=r"0\.917 of the original.*round_to=8.*Floors\(rho=0\.3, tau=0\.3\) reaches"):
        lw.dissimilate("cifar_densenet40", flops=0.91, data=data, criterion=criterion, model_kwargs=kwargs)
    assert scored == []
    result = lw.dissimilate(
        "cifar_resnet20", flops=0.5, data=data, floors=lw.Floors(rho=0.2, tau=0.2), model_kwargs=kwargs
    )  # the advice works
    assert result.spec["achieved"]["flops"] <= result.spec["target"]["flops"]
    assert "FLOPs counted by fvcore" in result.report.to_markdown()
    assert "at input 1x28x28 (channels x height x width)" in result.report.to_markdown()


def test_a_step_larger_than_every_group_is_refused_before_widening():
    data = lw.load_batches("mnist5k", batches=1, batch_size=16, img_size=28, in_chans=1)
    kwargs = {"num_classes": 10, "in_chans": 1}
    with pytest.raises(ValueError, match=r"round_to=4096 is larger than every channel group.*largest: 128"):
        lw.dissimilate("cifar_resnet20", round_to=4096, data=data, model_kwargs=kwargs)


def test_a_count_beyond_this_input_names_the_input_and_a_fraction_above_one_grows():
    data = lw.load_batches("mnist5k", batches=1, batch_size=16, img_size=28, in_chans=1)
    kwargs = {"num_classes": 10, "in_chans": 1}
    # resnet18's well-known 224 px figure, given for a 28 px one-channel model.
    with pytest.raises(ValueError, match=r"flops='1.8G'.*above even the widened model's .* at input 1x28x28"):
        lw.dissimilate("cifar_resnet20", flops="1.8G", data=data, model_kwargs=kwargs)
    with pytest.warns(
        UserWarning, match=r"flops=1.5: the target is 1.50x the original's FLOPs, so the model grows"
    ) as seen:
        lw.dissimilate("cifar_resnet20", flops=1.5, round_to=1, data=data, model_kwargs=kwargs)
    assert {w.filename for w in seen} == {__file__}  # the caller's line, not torch's wrapper
