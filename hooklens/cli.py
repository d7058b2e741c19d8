"""`hooklens` command line: `hooklens report | train | eval ...`.

Bad input (any `HooklensError`, a file that cannot be read or written, a model that
cannot be loaded) ends the command with one line on stderr and exit status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch.distributed

from hooklens import models
from hooklens.errors import HooklensError, InputError
from hooklens.training import distributed, jacobian_fit
from hooklens.training import evaluate as evaluation
from hooklens.training import run as training

# What a user can fix from the command line, printed as one line. OSError covers a
# missing or unreadable file, an existing output and a hub that cannot be reached.
USER_ERRORS = (HooklensError, ValueError, OSError)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default, except an unset one (None, []): its help says what it means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _read_text(args: argparse.Namespace) -> str:
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


def _report(args: argparse.Namespace) -> int:
    import torch

    from hooklens.lenses import JacobianLens
    from hooklens.report import TextCutWarning, cut_notice, trajectory_report

    if args.max_tokens < 1:
        raise InputError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    evaluation.check_output_file(args.output, "report.html")
    evaluation.check_lens_paths(args.lens, args.model)  # said before the model loads
    text = _read_text(args)
    start = time.perf_counter()
    with torch.no_grad():
        model = models.load(args.model, model_class=args.model_class, processing=args.processing)
        lenses = {}
        for index, directory in enumerate(args.lens):
            lens = evaluation.load_lens(directory, model)
            kind = "Jacobian lens" if isinstance(lens, JacobianLens) else "tuned lens"
            lenses[kind if len(args.lens) == 1 else f"{kind} {index + 1} ({directory})"] = lens
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


def _fit_jlens(args: argparse.Namespace) -> int:
    # One fit at a time owns --output (and the checkpoint named after it), before the
    # fit's own checks: a fit finishing meanwhile could otherwise be replaced.
    with training.owned_output([Path(args.output)], "hooklens fit-jlens"):
        return jacobian_fit.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hooklens", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report",
        help="write a self-contained HTML report of a text's prediction trajectory",
        formatter_class=_HelpFormatter,
    )
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to read")
    source.add_argument("--text-file", metavar="FILE", help="read the text from this file")
    report.add_argument(
        "--lens",
        action="append",
        default=[],
        metavar="LENS",
        help="a tuned lens directory, a Jacobian lens (.pt or directory), or a published "
        "Jacobian lens (a name in TransformerLens's registry, or owner/repo/path.pt on the "
        "hub); repeatable; the logit lens is always shown",
    )
    report.add_argument(
        "--model",
        default=models.DEFAULT_MODEL,
        help="model name (embedded, TransformerLens or hub)",
    )
    models.add_model_class_argument(report)
    models.add_processing_argument(report)
    report.add_argument("--output", default="hooklens-report.html", help="the HTML file to write")
    report.add_argument(
        "--max-tokens",
        type=int,
        default=64,
        help="read at most this many tokens of the text (a longer text is cut, with a notice)",
    )
    report.add_argument("--title", help="the report's title; default: 'hooklens: MODEL'")
    report.set_defaults(run=_report)
    train = commands.add_parser(
        "train",
        help="train a tuned lens: closed-form fit, then KL fine-tune (resumable)",
        formatter_class=_HelpFormatter,
    )
    training.add_arguments(train)
    train.set_defaults(run=training.run)
    evaluate = commands.add_parser(
        "eval",
        help="per-layer KL, cross-entropy, entropy, top-1 agreement on held-out text",
        formatter_class=_HelpFormatter,
    )
    evaluation.add_arguments(evaluate)
    evaluate.set_defaults(run=evaluation.run)
    fit_jlens = commands.add_parser(
        "fit-jlens",
        help="fit a Jacobian lens (the exact estimator; resumable)",
        formatter_class=_HelpFormatter,
    )
    jacobian_fit.add_arguments(fit_jlens)
    fit_jlens.set_defaults(run=_fit_jlens)
    return parser


def one_line(error: BaseException) -> str:
    """The error's message on one line (a message of several lines is joined)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    joined = ""
    for line in lines:
        line = line.removeprefix("- ")
        joined += line if not joined else (" " if joined.endswith(":") else "; ") + line
    return joined or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun, `train` and `fit-jlens` join the process group themselves; the
    # command closes it again, unless the caller had joined it before.
    group_was_open = torch.distributed.is_available() and torch.distributed.is_initialized()
    finished = False
    try:
        status = args.run(args)
        finished = True
        return status
    except USER_ERRORS as error:
        # Bad input, not a bug: say what is wrong without a traceback.
        print(f"hooklens {args.command}: {one_line(error)}", file=sys.stderr)
        return 2
    finally:
        if not group_was_open:
            distributed.leave(meet=finished)


if __name__ == "__main__":
    sys.exit(main())
