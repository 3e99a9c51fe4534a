"""Benchmark scripts run as documented: the hypothesis `--quick` smoke run and a one-model latency run."""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_data

ROOT = Path(__file__).resolve().parents[1]


@needs_data
def test_hypothesis_quick_is_resumable(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    command = [sys.executable, str(ROOT / "benchmarks" / "hypothesis.py"), "--quick", "--out", str(tmp_path)]
    subprocess.run(command, check=True, env=env, timeout=600)
    stem = "hypothesis_regimes_quick"
    files = sorted((tmp_path / f"{stem}_runs").glob("*.json"))
    assert len(files) == 6  # 3 arms x 2 seeds at one size, one file a run
    payload = json.loads((tmp_path / f"{stem}.json").read_text())
    keys = {"model", "train_size", "arm", "seed", "test_top1", "train_top1", "flops", "params", "widths"}
    assert all(keys | {"train_s", "identify_s"} <= set(run) for run in payload["runs"])
    rows = payload["summary"]["500"]
    assert set(rows) == {"baseline", "lwdna", "random"}
    assert rows["lwdna"]["flops"] <= rows["baseline"]["flops"] and rows["random"]["flops"] <= rows["baseline"]["flops"]
    assert rows["lwdna"]["vs_baseline"]["n"] == 2 and rows["lwdna"]["vs_random"]["n"] == 2
    low, high = rows["lwdna"]["vs_baseline"]["low"], rows["lwdna"]["vs_baseline"]["high"]
    assert low <= rows["lwdna"]["vs_baseline"]["mean"] <= high
    assert all(run["widths"] for run in payload["runs"] if run["arm"] != "baseline")
    assert all(run["test_top1"] > 15 for run in payload["runs"])
    for name in (f"{stem}.md", f"{stem}_gain.png", f"{stem}_widths.png"):
        assert (tmp_path / name).is_file(), name
    assert "### 500 training images, 2 epochs" in (tmp_path / f"{stem}.md").read_text()
    # A rerun finds every run finished and trains nothing.
    stamps = [f.stat().st_mtime_ns for f in files]
    again = subprocess.run(command, check=True, env=env, timeout=600, capture_output=True, text=True)
    assert "6 runs finished, 0 to run" in again.stdout
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # --report rewrites the report from the finished runs, even with runs left to do, and trains nothing.
    (tmp_path / f"{stem}.md").unlink()
    more = subprocess.run(
        [*command, "--seeds", "3", "--report"], check=True, env=env, timeout=600, capture_output=True, text=True
    )
    assert "6 runs finished, 3 to run" in more.stdout
    assert sorted((tmp_path / f"{stem}_runs").glob("*.json")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert "### 500 training images, 2 epochs" in (tmp_path / f"{stem}.md").read_text()
    assert "--report" not in json.loads((tmp_path / f"{stem}.json").read_text())["command"]


def _benchmark(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_interval():
    hypothesis = _benchmark("hypothesis")
    runs = [
        {"train_size": 10, "arm": arm, "seed": s, "test_top1": v}
        for arm, values in (("baseline", [80, 81, 82]), ("x", [81, 83, 82.5]))
        for s, v in enumerate(values)
    ]
    result = hypothesis.paired(runs, 10, "x", "baseline")
    assert result["diffs"] == [1, 2, 0.5] and result["n"] == 3
    half = 4.303 * statistics.stdev([1, 2, 0.5]) / 3**0.5  # t(0.975, 2 degrees of freedom)
    assert result["low"] == pytest.approx(result["mean"] - half) and result["high"] == pytest.approx(
        result["mean"] + half
    )
    assert hypothesis.paired(runs[:4], 10, "x", "baseline") is None  # one pair: no interval


def test_pooling_counts_every_size_and_seed_pair_once():
    hypothesis = _benchmark("hypothesis")
    top1 = {
        10: {"baseline": [80, 81, 82], "x": [81, 83, 82.5], "y": [79, 80, 81]},
        20: {"baseline": [90, 91], "x": [90, 90]},
    }
    runs = [
        {"train_size": n, "arm": arm, "seed": s, "test_top1": v}
        for n, arms in top1.items()
        for arm, values in arms.items()
        for s, v in enumerate(values)
    ]
    both = hypothesis.paired(runs, [10, 20], "x", "baseline")
    assert both["n"] == 5 and both["diffs"] == [1, 2, 0.5, 0, -1]
    pooled = hypothesis.pooled_differences(runs, ["baseline", "x", "y"], [10, 20])
    assert set(pooled) == {"x"}  # y was paired at one size only: its row is the per-size one
    assert pooled["x"]["sizes"] == [10, 20] and pooled["x"]["vs_baseline"] == both


def test_depth_priors_keep_the_earliest_or_the_latest_groups_whole():
    import lwdna_plugin as lw

    hypothesis = _benchmark("hypothesis")
    kwargs = {"num_classes": 10, "in_chans": 1}
    data = [(torch.randn(8, 1, 28, 28), torch.arange(8))]
    ratio = {}
    for early in (True, False):
        criterion = hypothesis.depth_scores("cifar_resnet20", kwargs, early, seed=0)
        # Raw scores, as the prior arms rank them: per FLOP, the cheap late groups would win anyway.
        options = {**hypothesis.VARIANTS["prior-early"], "criterion": criterion}
        result = lw.dissimilate("cifar_resnet20", data=data, model_kwargs=kwargs, **options)
        ratio[early] = {k: g["kept"] / g["original"] for k, g in result.spec["groups"].items()}
    # The stem's residual stream comes first, the last block's inner width last.
    assert ratio[True]["conv1"] > 1.5 and ratio[True]["stages.2.2.conv1"] < 1
    assert ratio[False]["stages.2.2.conv1"] > 1.5 and ratio[False]["conv1"] < 1


def test_model_kwargs_build_every_arm_and_join_the_protocol():
    hypothesis = _benchmark("hypothesis")
    args = hypothesis.parse_args(
        ["--model-kwargs", '{"widths": [8, 16, 32]}', "--sizes", "100", "--epochs", "1", "--seeds", "1"]
    )
    assert hypothesis.protocol_of(args, 0)["model_kwargs"] == {"widths": [8, 16, 32]}
    assert "model_kwargs" not in hypothesis.protocol_of(hypothesis.parse_args([]), 0)  # earlier runs still compare
    data = {"train_x": torch.randn(20, 1, 28, 28), "train_y": torch.arange(20) % 10}
    args.score_batch_size = 10
    args.round_to = 1  # widths of 8 cannot shrink in steps of 8 (the study takes --round-to 1 for them)
    baseline, _ = hypothesis.make_arm("baseline", data, args, 0, hypothesis.protocol_of(args, 0))
    assert baseline.fc.in_features == 32
    model, result = hypothesis.make_arm("random", data, args, 0, hypothesis.protocol_of(args, 0))
    assert result.spec["groups"]["conv1"]["original"] == 8
    with pytest.raises(SystemExit):
        hypothesis.parse_args(["--model-kwargs", "[8, 16]"])


def test_the_estimate_scales_with_the_models_macs_and_skips_twins():
    hypothesis = _benchmark("hypothesis")
    args = hypothesis.parse_args([])
    assert hypothesis.model_macs(args) == hypothesis.REFERENCE_MACS
    args = hypothesis.parse_args(["--model-kwargs", '{"widths": [8, 16, 32]}'])
    assert 0.2 < hypothesis.model_macs(args) / hypothesis.REFERENCE_MACS < 0.3
    assert hypothesis.has_defaults({}) and not hypothesis.has_defaults(None)
    assert not hypothesis.has_defaults(hypothesis.VARIANTS["random"])
    assert not hypothesis.has_defaults({"warmup_share": 0.03})


def test_a_report_replaces_lwdna_runs_made_under_other_defaults(tmp_path):
    """The study's seed-0 runs at 1,000 images, with the `lwdna` run recorded as it was while the
    paper's criterion was the default; the report records the variant with today's defaults."""
    hypothesis = _benchmark("hypothesis")
    runs = ROOT / "benchmarks" / "results" / "hypothesis_regimes_runs"
    folder = tmp_path / "study_runs"
    folder.mkdir()
    for arm in ("baseline", "lwdna-sum", "lwdna-flops"):
        name = f"cifar_resnet20_n1000_{arm}_s0.json"
        run = json.loads((runs / name).read_text())
        # As if run after the footprint and round_to 8 became the defaults (the study's runs predate them).
        run["protocol"]["round_to"] = None
        if arm == "lwdna-flops":
            run["settings"].update(footprint=hypothesis.DISSIMILATE_DEFAULTS["footprint"], round_to=8)
        (folder / name).write_text(json.dumps(run))
    old = {**json.loads((folder / "cifar_resnet20_n1000_lwdna-sum_s0.json").read_text()), "arm": "lwdna"}
    old["same_as"] = "lwdna-sum"
    assert old["settings"]["ranking"] == "saliency"
    (folder / "cifar_resnet20_n1000_lwdna_s0.json").write_text(json.dumps(old))
    argv = ["--sizes", "1000", "--epochs", "100", "--seeds", "1", "--out", str(tmp_path), "--tag", "study"]
    payload = hypothesis.main([*argv, "--arms", "baseline,lwdna-sum,lwdna-flops,lwdna", "--report"])
    twin = json.loads((folder / "cifar_resnet20_n1000_lwdna_s0.json").read_text())
    flops = json.loads((folder / "cifar_resnet20_n1000_lwdna-flops_s0.json").read_text())
    assert hypothesis.DISSIMILATE_DEFAULTS["ranking"] == "flops"
    assert twin["same_as"] == "lwdna-flops" and twin["test_top1"] == flops["test_top1"]
    assert payload["summary"]["1000"]["lwdna"]["test_top1_mean"] == flops["test_top1"]
    # Without the variant that has today's defaults, the old run is left for a rerun, not reported as `lwdna`.
    (folder / "cifar_resnet20_n1000_lwdna_s0.json").write_text(json.dumps(old))
    (folder / "cifar_resnet20_n1000_lwdna-flops_s0.json").unlink()
    payload = hypothesis.main([*argv, "--arms", "baseline,lwdna-sum,lwdna", "--report"])
    assert "lwdna" not in payload["summary"]["1000"] and "lwdna-sum" in payload["summary"]["1000"]


def test_the_estimate_learns_from_the_finished_runs_of_the_same_model():
    hypothesis = _benchmark("hypothesis")
    args = hypothesis.parse_args([])
    fallback, source = hypothesis.seconds_per_image(args, [])
    assert fallback == hypothesis.SECONDS_PER_IMAGE and "reference" in source

    def run(train_s, **extra):
        return {"train_s": train_s, "train_size": 100, "protocol": {"model": "cifar_resnet20", "epochs": 10}, **extra}

    finished = [run(1.0), run(2.0), run(9.0), run(500.0, same_as="lwdna-sum")]  # a twin trained nothing
    finished.append({**run(700.0), "protocol": {"model": "cifar_resnet20", "epochs": 10, "model_kwargs": {"w": 1}}})
    per_image, source = hypothesis.seconds_per_image(args, finished)
    assert per_image == pytest.approx(2.0 / 1000) and "3 finished runs" in source


def test_coverage_scores_as_many_pixels_at_any_input_and_reruns_rows_that_scored_more_or_lack_depth():
    coverage = _benchmark("coverage")
    assert coverage.scoring_batch_size(8, (3, 224, 224)) == 8
    assert coverage.scoring_batch_size(8, (3, 299, 299)) == 4  # 8 * 224^2 / 299^2 = 4.5
    assert coverage.scoring_batch_size(8, (3, 768, 768)) == 1  # never fewer than one image
    assert coverage.scoring_batch_size(8, (3, 160, 160)) == 8  # never more than asked
    args = coverage.argparse.Namespace(batches=2, batch_size=8, rerun_failed=False)
    old = {"model": "inception_v3", "ok": True, "depth": {}}  # from before `scoring_images`: 2 x 8 at 299 px
    assert coverage._rerun(old, args)
    assert not coverage._rerun({**old, "model": "resnet18"}, args)  # 224 px: 2 x 8 is what it scores now
    assert not coverage._rerun({**old, "scoring_images": [4, 4]}, args)
    # A passed row from before the depth was recorded runs again; a failed one has none to record.
    assert coverage._rerun({"model": "resnet18", "ok": True}, args)
    failed = {**old, "scoring_images": [4, 4], "ok": False}
    assert not coverage._rerun(failed, args)
    assert coverage._rerun(failed, coverage.argparse.Namespace(batches=2, batch_size=8, rerun_failed=True))


def test_coverage_worker_exports_the_standalone_module():
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    script = ROOT / "benchmarks" / "coverage.py"
    args = ["--worker", "tf_mobilenetv3_small_minimal_100", "--batches", "1", "--batch-size", "2"]
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=300)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["ok"] and row["export"] and "export_error" not in row, row


def test_latency_smoke(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    script = ROOT / "benchmarks" / "latency.py"
    args = ["--models", "resnet18", "--batch-sizes", "1", "--repeats", "2", "--score-batches", "1", "--threads", "1"]
    args += ["--score-batch-size", "4"]
    args += ["--seconds", "2", "--variants", "default", "flops_only", "latency", "--out"]
    subprocess.run([sys.executable, str(script), *args, str(tmp_path)], check=True, env=env, timeout=600)
    result = json.loads((tmp_path / "latency.json").read_text())
    assert " 1 threads" in result["meta"]["machine"]
    (row,) = result["rows"]
    for variant in ("default", "flops_only", "latency"):
        assert row[f"{variant}_flops_ratio"] <= 1.0 and row[f"{variant}_latency_ratio"] > 0
    assert row["default_footprint"]["params"] <= 1.0 and row["flops_only_footprint"] == {}
    assert row["baseline_ms"] > 0 and row["control_latency_ratio"] > 0
    assert row["repeats"] >= 2  # at least --repeats; --seconds adds more where the machine is fast
    for key in ("control", "default", "flops_only", "latency"):
        low, high = row[f"{key}_latency_interval"]
        assert low <= row[f"{key}_latency_ratio"] <= high
    table = (tmp_path / "latency.md").read_text()
    assert "LW-DNA latency budget: median at or below the baseline's latency in" in table
    assert "A copy of the baseline, timed the same way, read up to" in table
    assert "above it beyond the interval in" in table and "its 95% interval held 1.00 in" in table


def test_device_check_runs_here(tmp_path):
    """benchmarks/gpu_check.py runs on whatever device this machine has (the CPU here)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    only = ["bf16 model", "export_python on the device"]
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--only", *only, "--out", str(tmp_path)]
    subprocess.run(command, check=True, env=env, timeout=600)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    payload = json.loads((tmp_path / f"gpu_check_{device}.json").read_text())
    assert [row["check"] for row in payload["rows"]] == only
    assert payload["passed"] == 2, payload["rows"]


@needs_data
def test_width_sources_quick_controls_with_random_scores(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    command = [sys.executable, str(ROOT / "benchmarks" / "width_sources.py"), "--quick", "--out", str(tmp_path)]
    subprocess.run(command, check=True, env=env, timeout=600)
    payload = json.loads((tmp_path / "width_sources_quick.json").read_text())
    assert len(payload["runs"]) == 2 * 3 * 2  # arms x sources x seeds
    random, scored = payload["summary"]["random"], payload["summary"]["lwdna-sum"]
    # Random scores never read the data: every source gives the same widths for a seed.
    assert random["seed_to_seed"] == random["vs_shuffled"] == random["vs_noise"] > 0
    assert scored["vs_random"] > 0 and set(scored["mean_widths"]) == set(payload["runs"][0]["widths"])
    assert "| lwdna-sum |" in (tmp_path / "width_sources_quick.md").read_text()


def test_combine_writes_every_study_s_runs_flat_with_their_budget(tmp_path):
    hypothesis = _benchmark("hypothesis")
    for tag, flops in (("half", 0.5), ("three_quarters", 0.75)):
        runs = [{"arm": "uniform", "seed": 0, "budget": flops}, {"arm": "baseline", "seed": 0}]
        payload = {"config": {"flops": flops}, "summary": {}, "runs": runs}
        (tmp_path / f"{tag}.json").write_text(json.dumps(payload))
        (tmp_path / f"{tag}.md").write_text(f"table of {tag}\n")
    combined = hypothesis.main(["--combine", "half,three_quarters", "--out", str(tmp_path), "--tag", "both"])
    assert [(r["study"], r["arm"], r["budget"]) for r in combined["runs"]] == [
        ("half", "uniform", 0.5), ("half", "baseline", 0.5),
        ("three_quarters", "uniform", 0.75), ("three_quarters", "baseline", 0.75),
    ]  # fmt: skip
    assert json.loads((tmp_path / "both.json").read_text()) == combined
    assert (
        tmp_path / "both.md"
    ).read_text() == "## half\n\ntable of half\n\n## three_quarters\n\ntable of three_quarters\n"
    with pytest.raises(SystemExit, match="no report yet for \\['quarter'\\]"):
        hypothesis.main(["--combine", "half,quarter", "--out", str(tmp_path), "--tag", "both"])


def test_hypothesis_on_cifar_files_takes_channels_and_classes_from_the_data(tmp_path):
    from test_data import write_cifar

    write_cifar(tmp_path / "cifar", "cifar10", per_class=2)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    command = [
        sys.executable, str(ROOT / "benchmarks" / "hypothesis.py"), "--data", f"cifar10:{tmp_path / 'cifar'}",
        "--sizes", "50", "--epochs", "1", "--seeds", "1", "--test-size", "20", "--evals", "1", "--crop-pad", "4",
        "--schedule", "step:1", "--arms", "baseline,uniform", "--flops", "0.5", "--floor", "0.2",
        "--latency-batch", "0", "--workers", "1", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    subprocess.run(command, check=True, env=env, timeout=600)
    runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "hypothesis_cifar10_runs").glob("*.json"))]
    assert [r["arm"] for r in runs] == ["baseline", "uniform"]
    protocol = runs[0]["protocol"]
    assert protocol["data"] == f"cifar10:{tmp_path / 'cifar'}" and protocol["crop_pad"] == 4
    assert protocol["schedule"] == "step:1"
    # Three channels at 32 px: the full ResNet-20's MACs at CIFAR's size, uniform at half of them.
    import timm

    import lwdna_plugin as lw

    full = timm.create_model("cifar_resnet20", num_classes=10, in_chans=3)
    assert runs[0]["flops"] == lw.count_flops(full, torch.zeros(1, 3, 32, 32))
    assert 0.45 < runs[1]["flops"] / runs[0]["flops"] <= 0.5


def test_presets_set_a_paper_row_and_flags_win():
    hypothesis = _benchmark("hypothesis")
    args = hypothesis.parse_args(["--preset", "cifar10-densenet40", "--data", "cifar10:/data/cifar"])
    assert (args.model, args.batch_size, args.flops, args.schedule) == ("cifar_densenet40", 64, 0.907, "step:150,225")
    assert args.epochs == [300] and args.sizes == [50000] and args.crop_pad == 4
    own = hypothesis.parse_args(["--preset", "cifar10-densenet40", "--data", "cifar10:/d", "--batch-size", "32"])
    assert own.batch_size == 32
    with pytest.raises(SystemExit):
        hypothesis.parse_args(["--preset", "cifar100-densenet40", "--data", "cifar10:/d"])


def test_step_schedule_multiplies_by_a_tenth_after_each_listed_epoch():
    hypothesis = _benchmark("hypothesis")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = hypothesis.lr_schedule(optimizer, "step:1,2", epochs=3, steps_per_epoch=2)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="step:E1,E2"):
        hypothesis.lr_schedule(optimizer, "linear", 3, 2)


class _Interrupted(Exception):
    """A session ending in the middle of an epoch."""


def test_training_goes_on_from_its_checkpoint_as_if_never_stopped(tmp_path):
    import timm

    hypothesis = _benchmark("hypothesis")
    args = hypothesis.parse_args(["--sizes", "40", "--epochs", "4", "--seeds", "1", "--batch-size", "16"])
    protocol = hypothesis.protocol_of(args, 0)
    generator = torch.Generator().manual_seed(0)
    data = {
        "train_x": torch.randn(40, 1, 16, 16, generator=generator),
        "train_y": torch.arange(40) % 10,
        "test_x": torch.randn(20, 1, 16, 16, generator=generator),
        "test_y": torch.arange(20) % 10,
    }

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return timm.create_model("cifar_resnet20", num_classes=10, in_chans=1, widths=[4, 8, 16])

    # Contiguous: a strided 1x1 conv with 4 inputs is one of the channels-last kernel defects
    # `lw.training_memory_format` steers the study around.
    layout = torch.contiguous_format
    straight = model()
    expected = hypothesis.train(straight, data, protocol, 0, layout)

    checkpoint = tmp_path / "run.partial.pt"
    stopped, calls = model(), []

    def stop_in_epoch_three(module, inputs):
        calls.append(1)
        if module.training and len(calls) > 2 * 3 + 1:  # 3 batches an epoch: one batch into epoch 3
            raise _Interrupted

    hook = stopped.register_forward_pre_hook(stop_in_epoch_three)
    with pytest.raises(_Interrupted):
        hypothesis.train(stopped, data, protocol, 0, layout, checkpoint=checkpoint, save_every_s=0)
    hook.remove()
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2

    resumed, steps = model(), []  # a new process: the run's model rebuilt at its initialisation
    resumed.register_forward_pre_hook(lambda module, inputs: steps.append(1) if module.training else None)
    history = hypothesis.train(resumed, data, protocol, 0, layout, checkpoint=checkpoint, save_every_s=0)
    assert len(steps) == 2 * 3  # epochs 3 and 4 only
    assert history["train_loss"] == expected["train_loss"] and history["test_acc"] == expected["test_acc"]
    pairs = zip(resumed.state_dict().values(), straight.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)

    other = {**protocol, "lr": protocol["lr"] / 2}  # another protocol's state is never picked up
    assert hypothesis.load_checkpoint(checkpoint, other, 0, model()) is None and not checkpoint.exists()


@needs_data
def test_gate_precision_times_both_passes_and_their_scores_agree(tmp_path):
    module = _benchmark("gate_precision")
    rows = module.main(["--models", "resnet18", "mobilenetv2_100", "--repeats", "1", "--out", str(tmp_path)])
    by_model = {row["model"]: row for row in rows}
    # No depthwise layer in resnet18: the two passes are the same computation.
    assert by_model["resnet18"]["max_relative_score_difference"] == 0.0
    assert by_model["resnet18"]["min_rank_correlation"] == pytest.approx(1.0)
    # With depthwise layers in float32 the scores move at float32's rounding, not their order.
    assert by_model["mobilenetv2_100"]["max_relative_score_difference"] > 0.0
    assert by_model["mobilenetv2_100"]["min_rank_correlation"] > 0.99
    payload = json.loads((tmp_path / "gate_precision.json").read_text())
    assert [row["model"] for row in payload["rows"]] == ["resnet18", "mobilenetv2_100"]
    assert all(row["seconds"]["float64"] > 0 and row["seconds"]["depthwise_float32"] > 0 for row in payload["rows"])
