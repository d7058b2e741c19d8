"""`hooklens` command line: `hooklens report | train | eval ...`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hooklens import models
from hooklens.errors import HooklensError
from hooklens.training import evaluate as evaluation
from hooklens.training import run as training


def _report(args: argparse.Namespace) -> int:
    import torch

    from hooklens.lenses import TunedLens
    from hooklens.report import trajectory_report

    text = Path(args.text_file).read_text() if args.text_file else args.text
    if not text or not text.strip():
        print("hooklens report: give some text with --text or --text-file", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with torch.no_grad():
        model = models.load(args.model, model_class=args.model_class, processing=args.processing)
        lenses = {}
        for index, directory in enumerate(args.lens):
            name = "tuned lens" if len(args.lens) == 1 else f"tuned lens {index + 1} ({directory})"
            lenses[name] = TunedLens.load(directory, model=model)
        path = trajectory_report(
            model, text, lenses, args.output, max_tokens=args.max_tokens, title=args.title
        )
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB) in {time.perf_counter() - start:.1f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hooklens", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report", help="write a self-contained HTML report of a text's prediction trajectory"
    )
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to read")
    source.add_argument("--text-file", help="read the text from this file")
    report.add_argument(
        "--lens", action="append", default=[], help="a tuned lens directory (repeatable)"
    )
    report.add_argument(
        "--model", default=models.DEFAULT_MODEL, help="model name (default: %(default)s)"
    )
    models.add_model_class_argument(report)
    report.add_argument(
        "--processing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TransformerLens weight processing (default: the model class's own default)",
    )
    report.add_argument("--output", default="hooklens-report.html")
    report.add_argument("--max-tokens", type=int, default=64)
    report.add_argument("--title")
    report.set_defaults(run=_report)
    train = commands.add_parser(
        "train", help="train a tuned lens: closed-form fit, then KL fine-tune (resumable)"
    )
    training.add_arguments(train)
    train.set_defaults(run=training.run)
    evaluate = commands.add_parser(
        "eval", help="per-layer KL, cross-entropy, entropy, top-1 agreement on held-out text"
    )
    evaluation.add_arguments(evaluate)
    evaluate.set_defaults(run=evaluation.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (HooklensError, ValueError, FileNotFoundError, FileExistsError) as error:
        # Bad input, not a bug: say what is wrong without a traceback.
        print(f"hooklens {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
