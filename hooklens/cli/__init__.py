"""`hooklens` command line: `hooklens report | train | eval ...`.

Bad input (any `HooklensError`, a file that cannot be read or written, a model that
cannot be loaded) ends the command with one line on stderr and exit status 2; anything
else is a bug and keeps its traceback.

All the package's argparse code is here, and nothing in the library imports it. Its
modules, one sentence each:

- options: the options several commands share (`--model`, `--model-class`,
  `--processing`, `--device`, `--lens`), the `--output` and `--lens` checks made
  before a model loads, and a lens mismatch worded in flags.
- report: `hooklens report`, one HTML page of a text's prediction trajectories.
- train: `hooklens train`, a resumable tuned-lens run into a directory (`run.json`,
  checkpoint, lens), under torchrun too.
- eval: `hooklens eval`, per-layer numbers on held-out text (JSON and figures).
- fit_jlens: `hooklens fit-jlens`, a resumable Jacobian-lens fit.
- serve: `hooklens serve`, the explorer as a local web app.
"""

from __future__ import annotations

import argparse
import sys

import torch.distributed

from hooklens.cli import eval as evaluation
from hooklens.cli import fit_jlens, report, serve, train
from hooklens.core import distributed
from hooklens.errors import HooklensError

DESCRIPTION = """`hooklens` command line: `hooklens report | train | eval ...`.

Bad input (any `HooklensError`, a file that cannot be read or written, a model that
cannot be loaded) ends the command with one line on stderr and exit status 2; anything
else is a bug and keeps its traceback.
"""

# What a user can fix from the command line, printed as one line. OSError covers a
# missing or unreadable file, an existing output and a hub that cannot be reached.
USER_ERRORS = (HooklensError, ValueError, OSError)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default, except an unset one (None, []): its help says what it means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hooklens", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command, summary in (
        ("report", report, "write a self-contained HTML report of a text's prediction trajectory"),
        ("train", train, "train a tuned lens: closed-form fit, then KL fine-tune (resumable)"),
        (
            "eval",
            evaluation,
            "per-layer KL, cross-entropy, entropy, top-1 agreement on held-out text",
        ),
        ("fit-jlens", fit_jlens, "fit a Jacobian lens (the exact estimator; resumable)"),
        ("serve", serve, "explore prompts, lenses and statistics in a local web app"),
    ):
        subparser = commands.add_parser(name, help=summary, formatter_class=_HelpFormatter)
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
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
