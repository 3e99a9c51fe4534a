"""The `lwdna` command: the README's demo and its errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lwdna_plugin.cli import main


def test_cli_dissimilate_writes_outputs(tmp_path, capsys):
    code = main(
        [
            "dissimilate",
            "resnet18",
            "--data",
            "mnist5k",
            "--batches",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    for name in ("spec.json", "report.md", "channels.png"):
        assert (tmp_path / name).is_file()
    out = capsys.readouterr().out
    assert "at input 3x64x64" in out  # what the FLOPs were counted at
    assert "channel groups: 12 of 13 can change width, holding 100% of the channels" in out


def test_cli_ranking_inits_and_warmup_reach_the_spec(tmp_path):
    import json

    args = ["dissimilate", "resnet18", "--data", "mnist5k", "--batches", "1", "--batch-size", "8"]
    warmup = ["--warmup", "3", "--warmup-lr", "0.05"]
    code = main([*args, "--ranking", "flops", "--inits", "2", *warmup, "--out", str(tmp_path), "--quiet"])
    assert code == 0
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert (spec["ranking"], spec["inits"]) == ("flops", 2)
    # Two initialisations, each warmed up 3 steps on the 3 batches after the scored one.
    warmed = spec["warmup"]
    assert (warmed["steps"], warmed["lr"], warmed["spent"]["steps"], warmed["spent"]["images"]) == (3, 0.05, 6, 48)


def test_cli_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["dissimilate", "resnet18", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "neither an ImageFolder directory nor a named set" in capsys.readouterr().err


def test_cli_unknown_model(tmp_path, capsys):
    code = main(["dissimilate", "resnet_nonexistent", "--data", "mnist5k", "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "timm has no model" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "lwdna"
    out = subprocess.run([str(script), "dissimilate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--round-to" in out.stdout


@pytest.mark.parametrize(("size", "shape"), [("32", [3, 32, 32]), ("24x40", [3, 24, 40])])
def test_cli_image_folder(tmp_path, size, shape):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), color=(i * 60, 10, 200 if cls == "a" else 0)).save(
                tmp_path / "data" / cls / f"{i}.png"
            )
    code = main(
        [
            "dissimilate",
            "resnet18",
            "--data",
            str(tmp_path / "data"),
            "--img-size",
            size,
            "--batches",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "out" / "spec.json").read_text())["input_size"] == shape


def test_cli_data_none_is_data_free(tmp_path, capsys):
    code = main(["dissimilate", "resnet18", "--data", "none", "--num-classes", "10", "--out", str(tmp_path), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "criterion: synflow (aggregate=sum) data-free: no data was used" in (tmp_path / "report.md").read_text()


def test_cli_gate_asked_for_without_data_is_an_error(tmp_path, capsys):
    args = ["dissimilate", "resnet18", "--data", "none", "--criterion", "gate", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 2
    assert "criterion 'gate' scores on data" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a timm MODEL name (with --data) or --mm-config"),
        (["resnet18", "--mm-config", "cfg.py"], "or --mm-config, not both"),
    ],
)
def test_cli_model_or_config(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        main(["dissimilate", *args, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err


def test_cli_export_python(resnet18_result, tmp_path, capsys):
    resnet18_result.save(tmp_path)
    assert main(["export", str(tmp_path / "spec.json"), "--python", str(tmp_path / "resnet18_lwdna.py")]) == 0
    assert "Imports timm: no" in (tmp_path / "resnet18_lwdna.py").read_text()
    assert main(["export", str(tmp_path / "spec.json"), "--python", str(tmp_path / "model.txt")]) == 2
    assert "ending in .py" in capsys.readouterr().err


def _run(*args: str) -> list[str]:
    return ["dissimilate", "resnet18", "--img-size", "32", "--batch-size", "4", "--quiet", *args]


def test_cli_an_output_path_that_is_a_file_fails_before_the_work(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("")
    for out, message in ((taken, "is a file"), (taken / "sub", f"{taken} cannot be written")):
        assert main(_run("--data", "mnist5k", "--out", str(out))) == 2
        assert f"--out {out}: {message}" in capsys.readouterr().err
    assert taken.read_text() == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--latency", "0"], "LatencyBudget(ratio=0.0): must be positive"),
        (["--num-classes", "0"], "has no classifier (num_classes=0"),
    ],
)
def test_cli_zero_is_an_answer_not_a_default(tmp_path, capsys, args, message):
    assert main(_run("--data", "mnist5k", "--out", str(tmp_path / "out"), *args)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_image_folders_without_classes_or_with_unreadable_images(tmp_path, capsys):
    empty, broken = tmp_path / "empty", tmp_path / "broken" / "a"
    empty.mkdir()
    broken.mkdir(parents=True)
    (broken / "0.png").write_text("not an image")
    for root, message in ((empty, "Couldn't find any class folder"), (broken.parent, "could not be read")):
        assert main(_run("--data", str(root), "--out", str(tmp_path / "out"))) == 2
        err = capsys.readouterr().err
        assert f"ImageFolder {root}" in err and message in err
    assert "0.png" in err


def test_cli_data_free_at_a_height_and_width(tmp_path):
    args = ["dissimilate", "resnet18", "--img-size", "24x40", "--data", "none", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    assert json.loads((tmp_path / "spec.json").read_text())["input_size"] == [3, 24, 40]


@pytest.mark.parametrize("size", ["0", "24x", "24x40x3", "big"])
def test_cli_a_bad_image_size_names_the_form(size, capsys):
    with pytest.raises(SystemExit):
        main(["dissimilate", "resnet18", "--img-size", size, "--out", "x"])
    assert "HEIGHTxWIDTH, e.g. 64x96" in capsys.readouterr().err


def test_help_shows_every_option_with_its_default_and_the_version(capsys):
    import lwdna_plugin as lw

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"lwdna {lw.__version__}"
    with pytest.raises(SystemExit):
        main(["dissimilate", "--help"])
    text = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]  # past the usage line
    for option, default in [
        ("--batch-size", "64"), ("--aggregate", "sum"), ("--floor", "0.4"), ("--classifier-floor", "0.45"),
        ("--min-channels", "4"), ("--inits", "1"), ("--round-to", "8"), ("--seed", "0"),
    ]:  # fmt: skip
        assert f"default {default}" in text.split(option, 1)[1].split(" --", 1)[0], option
    assert text.index("saliency = raw") < text.index("flops = saliency per FLOP") < text.index("uniform = no")


@pytest.mark.parametrize(("argv0", "given", "seen"), [("/venv/bin/lwdna", None, "PASSIVE"),
                                                       ("/venv/bin/lwdna", "ACTIVE", "ACTIVE"),
                                                       ("train.py", None, "None")])  # fmt: skip
def test_the_command_sets_openmp_passive_before_torch_loads_unless_told(argv0, given, seen):
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = f"import sys; sys.argv[0] = {argv0!r}; import lwdna_plugin, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == seen
