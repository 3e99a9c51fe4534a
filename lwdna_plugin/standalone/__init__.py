"""Standalone export: the LW-DNA model as a Python module in plain PyTorch (`export_python`).

The LW-DNA model is traced with torch.fx, once in train and once in eval mode. Every layer
defined in `torch.nn` stays a layer and is written as its constructor call with explicit
channel counts (each call is checked by re-creating the layer and comparing its tensors and
settings); everything else (timm's blocks and stems) is traced through, so its forward
becomes the generated `forward` and its module becomes a plain `nn.Module` container with
the same name. A state dict saved from the LW-DNA model therefore loads with `strict=True`.
timm's BatchNormAct2d becomes a small helper class of the file (nn.BatchNorm2d, then its drop
and act layers) and timm's LayerNorm an nn.LayerNorm, both with the same tensor names.

fx fixes Python branches on `self.training`: a functional call given `training=` reads
`self.training` at run time instead; if the two traces still differ, `forward` dispatches to
one per mode. Functions timm keeps out of tracing (its fx "notrace" functions) stay calls into
timm: the generated file imports them and lists them in its docstring and in `TIMM_IMPORTS`.
None of the 12 core models needs one with timm 1.0.
A model fx cannot trace (Python control flow on input shapes, as in VGG's ConvMlp) is traced
again with timm's "notrace" modules kept whole; each becomes a helper class of the same name
whose forward is the original's source, copied.

One concept a module, in the order the file is written:

- `api`: `export_python` and `python_source`, the entry points
- `trace`: the fx tracer and the train- and eval-mode traces
- `substitutes`: timm layers written as one constructor call (and the helper classes they need)
- `copied`: layers fx cannot trace, written as helper classes with their forward copied
- `layers`: a torch.nn layer as the constructor call that re-creates it
- `tensors`: parameters, buffers and lifted constants, and the values the file gives them
- `tree`: the modules the file recreates, and the `__init__` that builds them
- `forward`: the traces' code as forward methods, dispatching on the mode where they differ
- `imports`: the file's import block and its timm imports
- `header`: the file's docstring
- `style`: fx's code made to read like ruff-formatted code
- `writer`: the whole file, assembled
"""

from .api import export_python, python_source
from .writer import Standalone

__all__ = ["Standalone", "export_python", "python_source"]
