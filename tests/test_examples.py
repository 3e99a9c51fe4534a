"""Examples run as documented, at tiny sizes."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_example(tmp_path):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--steps", "6", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "reloaded the trained weights" in out.stdout
    assert (tmp_path / "run" / "model.pt").is_file()
