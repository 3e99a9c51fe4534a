"""standalone.imports: the generated file's import block, with timm's imports kept apart."""

import math

import pytest
import torch
from timm.layers import resample_abs_pos_embed

import lwdna_plugin
from lwdna_plugin.standalone.imports import Imports, import_target


def test_globals_become_imports_in_isort_order():
    imports = Imports()
    imports.add_global("inf", math.inf)
    imports.add_global("NoneType", type(None))
    imports.add_global("operator", __import__("operator"))
    imports.add_global("getattr", getattr)  # a builtin: nothing to import
    imports.add_global("torch", torch)
    imports.add_global("resample_abs_pos_embed", resample_abs_pos_embed)
    assert imports.lines == {"from math import inf", "NoneType = type(None)", "import operator"}
    assert imports.timm_targets == ["timm.layers.pos_embed.resample_abs_pos_embed"]
    block = imports.block("y = F.relu(torch.ones(1))")
    assert block == (
        "import operator\n"
        "from math import inf\n"
        "\n"
        "import torch\n"
        "import torch.nn as nn\n"
        "import torch.nn.functional as F\n"
        "from timm.layers.pos_embed import resample_abs_pos_embed\n"
        "\n"
        "NoneType = type(None)"
    )


def test_torch_is_imported_only_when_used():
    assert Imports().block("y = x") == "import torch.nn as nn"
    assert Imports(wrapped={"f"}).block("y = x") == "import torch\nimport torch.nn as nn"


def test_functions_the_file_cannot_import_are_refused():
    with pytest.raises(ValueError, match="cannot import it"):
        Imports().add_global("dissimilate", lwdna_plugin.dissimilate)
    with pytest.raises(ValueError, match="cannot import"):
        Imports().add_global("f", lambda x: x)


def test_import_target():
    assert import_target("from timm.layers import f") == "timm.layers.f"
    assert import_target("import torch.nn") == "torch.nn"
