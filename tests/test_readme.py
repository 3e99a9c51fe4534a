"""The README's Python quick start runs as written."""

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_start_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(blocks[0], str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "runs/resnet50_lwdna/spec.json").is_file()
    assert namespace["model"](namespace["train_batches"][0][0][:2]).shape == (2, 10)
