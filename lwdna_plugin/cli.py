"""`lwdna` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .api import DEFAULTS, Result, dissimilate
from .budget import RANKINGS, Floors
from .data import image_size, load_batches, num_classes
from .footprint import Footprint
from .latency import LatencyBudget
from .memory import AUTO
from .score import AGGREGATIONS, CRITERIA
from .standalone import export_python
from .warmup import Warmup

# The command line's defaults are the Python API's.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lwdna", description="Layer-wise dissimilation (LW-DNA) of timm models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "dissimilate",
        help="widen, score at init, shrink to a FLOP budget; write spec.json, report.md, channels.png",
    )
    _add_model_and_data(d)
    _add_identification(d)
    _add_budget(d)
    _add_output(d)
    _add_export(sub)
    return parser


def _add_model_and_data(d: argparse.ArgumentParser) -> None:
    """What to dissimilate, on which batches, at which input size."""
    d.add_argument("model", nargs="?", help="timm model name, e.g. resnet18 (or give --mm-config)")
    d.add_argument(
        "--mm-config",
        help="an mmengine config file: its `model` is dissimilated on batches of its `train_dataloader`",
    )
    d.add_argument("--width", type=float, default=2.0, help="widening factor before scoring (default 2.0)")
    d.add_argument("--flops", default="1.0", help="target: fraction of the original FLOPs (1.0) or a count (350M)")
    d.add_argument(
        "--data",
        help="ImageFolder directory, a named offline set (mnist5k, fashion-mnist), or 'none' for data-free "
        "scoring (synflow)",
    )
    d.add_argument(
        "--batches",
        type=int,
        default=DEFAULTS["batches"],
        help=f"mini-batches scored at initialisation (default {DEFAULTS['batches']})",
    )
    d.add_argument("--batch-size", type=int, default=64, help="images per scoring batch (default 64)")
    d.add_argument(
        "--score-batch-size",
        type=_micro_batch,
        default="auto",
        help="score each batch in micro-batches of at most this many images (less memory); 'auto' (default) cuts "
        "batches only when their activations would not fit the device's memory budget",
    )
    d.add_argument(
        "--img-size",
        type=_img_size,
        default="64",
        help="input resolution for scoring and FLOPs: one number (square) or HEIGHTxWIDTH, e.g. 64x96 (default 64)",
    )
    d.add_argument("--num-classes", type=int, help="classifier size (default: from the data)")


def _add_identification(d: argparse.ArgumentParser) -> None:
    """How channels are scored and ranked."""
    d.add_argument(
        "--criterion", choices=CRITERIA, help="channel scores (default: gate with --data, synflow with --data none)"
    )
    d.add_argument(
        "--aggregate",
        default=DEFAULTS["aggregate"],
        choices=AGGREGATIONS,
        help=f"how coupled layers' scores combine (default {DEFAULTS['aggregate']})",
    )
    d.add_argument(
        "--ranking",
        default=DEFAULTS["ranking"],
        choices=RANKINGS,
        help="what the global threshold compares: saliency = raw saliency (the paper's), flops = saliency per FLOP "
        "of the channel (default), uniform = no threshold, every group thinned by one fraction (a baseline)",
    )
    d.add_argument(
        "--inits",
        type=int,
        default=DEFAULTS["inits"],
        help=f"initialisations of the widened model to score and average rank by rank (default {DEFAULTS['inits']})",
    )
    d.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="SGD steps to train the widened model on further batches of --data before scoring (default 0: none)",
    )
    d.add_argument("--warmup-lr", type=float, default=Warmup.lr, help=f"the warm-up's learning rate ({Warmup.lr})")


def _add_budget(d: argparse.ArgumentParser) -> None:
    """What the widths may spend: floors, rounding, latency and footprint limits."""
    d.add_argument(
        "--floor",
        type=float,
        default=Floors.rho,
        help=f"min fraction of each widened group kept (rho, default {Floors.rho})",
    )
    d.add_argument(
        "--classifier-floor",
        type=float,
        default=Floors.tau,
        help=f"min fraction for the classifier input (tau, default {Floors.tau})",
    )
    d.add_argument(
        "--min-channels",
        type=int,
        default=Floors.min_channels,
        help=f"no group below this many channels (default {Floors.min_channels})",
    )
    d.add_argument(
        "--round-to",
        type=int,
        default=DEFAULTS["round_to"],
        help=f"keep every width a multiple of this (default {DEFAULTS['round_to']}; 1 for any width)",
    )
    d.add_argument(
        "--device",
        help="where to build, score and time the model (cpu, cuda, cuda:1, ...; default: cpu)",
    )
    d.add_argument(
        "--latency",
        type=float,
        help="also stay at most this times the original's latency on this machine (e.g. 1.0); layers are timed",
    )
    d.add_argument(
        "--latency-batch",
        type=int,
        nargs="+",
        default=[1, 32],
        help="batch sizes the --latency budget holds at (default 1 32)",
    )
    d.add_argument(
        "--latency-margin",
        type=float,
        default=LatencyBudget.margin,
        help="aim this fraction under the --latency ratio, for timing noise (default 0.05)",
    )
    d.add_argument(
        "--footprint",
        type=_footprint,
        default="1.0,1.0",
        metavar="ACTIVATIONS,PARAMS",
        help="at most these multiples of the original's activations and parameters (default 1.0,1.0: no more, "
        "so no more data moved), keeping at least 0.95 of the FLOP target; 'none' plans on FLOPs alone, "
        "'none' for one of the two leaves it free",
    )


def _add_output(d: argparse.ArgumentParser) -> None:
    d.add_argument("--seed", type=int, default=0, help="seed of initialisation and scoring (default 0)")
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_export(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="write an LW-DNA spec as a standalone PyTorch module (no lwdna_plugin needed)")
    e.add_argument("spec", help="spec.json written by `lwdna dissimilate` (or its directory)")
    e.add_argument("--python", required=True, help="output .py file")
    e.add_argument("--class-name", help="class name (default: LWDNA + the base model's name)")


def _footprint(text: str) -> Footprint | None:
    if text.strip().lower() == "none":
        return None
    parts = [v.strip().lower() for v in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        return Footprint(*(None if v == "none" else float(v) for v in parts))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give ACTIVATIONS,PARAMS multiples such as 1.0,1.0 (either may be none), or none"
        ) from None


def _flops(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _img_size(text: str) -> tuple[int, int]:
    try:
        return image_size([int(v) for v in text.lower().split("x")])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number or HEIGHTxWIDTH, e.g. 64x96") from None


def _micro_batch(text: str) -> int | str:
    if text == AUTO:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of images or {AUTO!r}") from None


def _timm_job(args: argparse.Namespace) -> tuple[str, list | None, dict]:
    if args.data == "none":
        return args.model, None, {"num_classes": args.num_classes} if args.num_classes is not None else {}
    classes = args.num_classes if args.num_classes is not None else num_classes(args.data)
    count = args.batches + max(args.warmup, 0)  # the warm-up trains on the batches after the scored ones
    data = load_batches(args.data, count, args.batch_size, args.img_size, seed=args.seed)
    return args.model, data, {"num_classes": classes} if classes is not None else {}


def _mmengine_job(args: argparse.Namespace) -> tuple[dict, object, dict]:
    """The config's model and its training dataloader; modules next to the config file are importable."""
    path = Path(args.mm_config).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"--mm-config {args.mm_config}: no such file")
    try:
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        from mmengine.runner import Runner
    except ImportError as err:
        raise ImportError("--mm-config needs mmengine: pip install 'lwdna-plugin[mm]'") from err
    sys.path.insert(0, str(path.parent))
    cfg = Config.fromfile(str(path))
    init_default_scope(cfg.get("default_scope", "mmengine"))
    for key in ("model", "train_dataloader"):
        if key not in cfg:
            raise ValueError(f"--mm-config {args.mm_config}: the config has no `{key}`")
    loader = Runner.build_dataloader(cfg.train_dataloader.to_dict(), seed=args.seed)
    return cfg.model.to_dict(), loader, {}


def _export(args: argparse.Namespace) -> int:
    try:
        path = export_python(args.spec, args.python, class_name=args.class_name)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"lwdna: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _unwritable(out: Path) -> str | None:
    """Why the output folder `out` could not be made or written, or None."""
    if out.exists() and not out.is_dir():
        return "is a file; give a folder for spec.json, report.md and channels.png"
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} cannot be written; give a folder you can write to"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "export":
        return _export(args)
    if args.model is None and args.mm_config is None:
        parser.error("give a timm MODEL name (with --data) or --mm-config")
    if args.model is not None and args.mm_config is not None:
        parser.error("give either a timm MODEL name (with --data) or --mm-config, not both")
    if args.model is not None and args.data is None:
        parser.error("--data is required with a timm model (an image folder or mnist5k, fashion-mnist)")
    problem = _unwritable(Path(args.out))
    if problem:  # checked before the work, not found after it
        print(f"lwdna: error: --out {args.out}: {problem}", file=sys.stderr)
        return 2
    try:
        result = _dissimilate(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"lwdna: error: {err}", file=sys.stderr)
        return 2
    try:
        out = result.save(args.out)
    except OSError as err:
        print(f"lwdna: error: --out {args.out}: cannot write the results ({err})", file=sys.stderr)
        return 2
    _summary(result)
    print(f"wrote {out / 'spec.json'}, {out / 'report.md'}, {out / 'channels.png'}")
    return 0


def _dissimilate(args: argparse.Namespace) -> Result:
    """`dissimilate` with the command line's arguments."""
    model, data, model_kwargs = _mmengine_job(args) if args.mm_config else _timm_job(args)
    return dissimilate(
        model,
        width=args.width,
        flops=_flops(args.flops),
        data=data,
        batches=args.batches,
        score_batch_size=args.score_batch_size,
        criterion=args.criterion or ("synflow" if data is None else "gate"),
        input_size=(3, *args.img_size) if data is None else None,
        aggregate=args.aggregate,
        ranking=args.ranking,
        inits=args.inits,
        warmup=Warmup(args.warmup, lr=args.warmup_lr) if args.warmup else None,
        floors=Floors(args.floor, args.classifier_floor, args.min_channels),
        round_to=args.round_to,
        seed=args.seed,
        model_kwargs=model_kwargs,
        device=args.device,
        progress=not args.quiet,
        latency=LatencyBudget(args.latency, tuple(args.latency_batch), margin=args.latency_margin)
        if args.latency is not None
        else None,
        footprint=args.footprint,
    )


def _summary(result: Result) -> None:
    """The lines printed after a run: FLOPs, parameters, depth, footprint and latency."""
    f = result.report.flops
    print(
        f"{result.report.model}: FLOPs {f['lwdna']:,} / original {f['original']:,} ({f['lwdna'] / f['original']:.4f}) "
        f"at input {'x'.join(map(str, result.report.input_size))}, "
        f"params {result.report.params['lwdna'] / result.report.params['original']:.4f} of the original"
    )
    depth = result.report.depth
    if depth is not None:
        print(
            f"channel groups: {depth.free_groups} of {depth.free_groups + depth.fixed_groups} can change width, "
            f"holding {depth.free_share:.0%} of the channels"
        )
    spent = result.spec["achieved"].get("footprint")
    if spent:
        print("footprint vs the original: " + ", ".join(f"{kind} {ratio:.3f}x" for kind, ratio in spent.items()))
    ratios = result.spec["achieved"].get("latency_ratios")
    if ratios:
        print("latency vs the original: " + ", ".join(f"{r:.3f}x at batch {b}" for b, r in ratios.items()))


if __name__ == "__main__":
    sys.exit(main())
