"""The `lwdna` command: the README's demo and its errors."""

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
    assert "FLOPs" in capsys.readouterr().out


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


@pytest.mark.parametrize("size", [32])
def test_cli_image_folder(tmp_path, size):
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
            str(size),
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


def test_cli_data_none_is_data_free(tmp_path, capsys):
    code = main(["dissimilate", "resnet18", "--data", "none", "--num-classes", "10", "--out", str(tmp_path), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "criterion: synflow (aggregate=sum) data-free: no data was used" in (tmp_path / "report.md").read_text()


def test_cli_export_python(resnet18_result, tmp_path, capsys):
    resnet18_result.save(tmp_path)
    assert main(["export", str(tmp_path / "spec.json"), "--python", str(tmp_path / "resnet18_lwdna.py")]) == 0
    assert "Imports timm: no" in (tmp_path / "resnet18_lwdna.py").read_text()
    assert main(["export", str(tmp_path / "spec.json"), "--python", str(tmp_path / "model.txt")]) == 2
    assert "ending in .py" in capsys.readouterr().err
