"""`hooklens report`: one self-contained HTML page of a text's prediction trajectories."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

from hooklens import models
from hooklens.cli import options
from hooklens.errors import InputError
from hooklens.report import TextCutWarning, cut_notice, trajectory_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to read")
    source.add_argument("--text-file", metavar="FILE", help="read the text from this file")
    options.add_lens_argument(parser, "shown")
    options.add_model_argument(parser, "model name (embedded, TransformerLens or hub)")
    options.add_model_class_argument(parser)
    options.add_processing_argument(parser)
    parser.add_argument("--output", default="hooklens-report.html", help="the HTML file to write")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=64,
        help="read at most this many tokens of the text (a longer text is cut, with a notice)",
    )
    parser.add_argument("--title", help="the report's title; default: 'hooklens: MODEL'")


def read_text(args: argparse.Namespace) -> str:
    """The text of `--text`, or of `--text-file`; `InputError` if unreadable or empty."""
    if args.text_file is None:
        text = args.text
    else:
        try:
            text = Path(args.text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise InputError(f"--text-file {args.text_file}: {reason}") from error
    if not text or not text.strip():
        raise InputError("give some text with --text or --text-file (this one is empty)")
    return text


def run(args: argparse.Namespace) -> int:
    if args.max_tokens < 1:
        raise InputError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    options.check_output_file(args.output, "report.html")
    options.check_lens_paths(args.lens, args.model)  # said before the model loads
    text = read_text(args)
    start = time.perf_counter()
    with torch.no_grad():
        model = models.load(args.model, model_class=args.model_class, processing=args.processing)
        lenses = options.named_lenses(args.lens, model)
        notice = cut_notice(model, text, args.max_tokens, option="--max-tokens ")
        if notice is not None:
            print(notice, file=sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TextCutWarning)  # said above, in flag terms
            path = trajectory_report(
                model, text, lenses, args.output, max_tokens=args.max_tokens, title=args.title
            )
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB) in {time.perf_counter() - start:.1f}s")
    return 0
