"""`lwdna` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .api import dissimilate
from .budget import Floors
from .data import load_batches, num_classes
from .score import AGGREGATIONS, CRITERIA


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lwdna", description="Layer-wise dissimilation (LW-DNA) of timm models.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "dissimilate",
        help="widen, score at init, shrink to a FLOP budget; write spec.json, report.md, channels.png",
    )
    d.add_argument("model", help="timm model name, e.g. resnet18")
    d.add_argument("--width", type=float, default=2.0, help="widening factor before scoring (default 2.0)")
    d.add_argument("--flops", default="1.0", help="target: fraction of the original FLOPs (1.0) or a count (350M)")
    d.add_argument("--data", required=True, help="ImageFolder directory or a named offline set: mnist5k, fashion-mnist")
    d.add_argument("--batches", type=int, default=2, help="mini-batches scored at initialisation (default 2)")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--img-size", type=int, default=64, help="input resolution for scoring and FLOPs (default 64)")
    d.add_argument("--num-classes", type=int, help="classifier size (default: from the data)")
    d.add_argument("--criterion", default="gate", choices=CRITERIA)
    d.add_argument("--aggregate", default="sum", choices=AGGREGATIONS, help="how coupled layers' scores combine")
    d.add_argument("--floor", type=float, default=0.4, help="min fraction of each widened group kept (rho)")
    d.add_argument("--classifier-floor", type=float, default=0.45, help="min fraction for the classifier input (tau)")
    d.add_argument("--min-channels", type=int, default=4)
    d.add_argument("--round-to", type=int, default=1, help="keep every width a multiple of this (e.g. 8)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _flops(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    classes = args.num_classes or num_classes(args.data)
    model_kwargs = {"num_classes": classes} if classes else {}
    try:
        data = load_batches(args.data, args.batches, args.batch_size, args.img_size, seed=args.seed)
        result = dissimilate(
            args.model,
            width=args.width,
            flops=_flops(args.flops),
            data=data,
            batches=args.batches,
            criterion=args.criterion,
            aggregate=args.aggregate,
            floors=Floors(args.floor, args.classifier_floor, args.min_channels),
            round_to=args.round_to,
            seed=args.seed,
            model_kwargs=model_kwargs,
            progress=not args.quiet,
        )
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"lwdna: error: {err}", file=sys.stderr)
        return 2
    out = result.save(args.out)
    f = result.report.flops
    print(
        f"{args.model}: FLOPs {f['lwdna']:,} / original {f['original']:,} ({f['lwdna'] / f['original']:.4f}), "
        f"params {result.report.params['lwdna'] / result.report.params['original']:.4f} of the original"
    )
    print(f"wrote {out / 'spec.json'}, {out / 'report.md'}, {out / 'channels.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
