"""Options and checks several commands share: `--model`, `--model-class`, `--processing`,
`--device`, `--lens`, `--output`, and `MODEL DATA` given positionally; a lens mismatch
worded in flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hooklens import models
from hooklens.errors import InputError
from hooklens.lenses import Lens, registry
from hooklens.lenses.registry import Mismatch


def add_model_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """`--model NAME` (default: the embedded model)."""
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help=help)


DEFAULT_DATA = "wikipedia-summaries"  # the offline corpus


def add_model_and_data_arguments(
    parser: argparse.ArgumentParser, command: str, model_help: str, data_help: str
) -> None:
    """`[MODEL] [DATA]` positional, as tuned-lens's README writes its commands
    (`train gpt2 val.jsonl --output gpt2-lens`), beside `--model NAME` and `--data
    SOURCE`; the command's `run` merges them with `resolve_model_and_data`."""
    parser.add_argument(
        "model_positional",
        nargs="?",
        metavar="MODEL",
        help="the model, given without its flag (tuned-lens's form); the same as --model: "
        "give one or the other",
    )
    parser.add_argument(
        "data_positional",
        nargs="?",
        metavar="DATA",
        help="the data, given without its flag after MODEL; the same as --data: give one or "
        "the other",
    )
    parser.add_argument("--model", help=f"{model_help}; default: {models.DEFAULT_MODEL}")
    parser.add_argument("--data", help=f"{data_help}; default: {DEFAULT_DATA}")
    parser.epilog = (
        f"MODEL and DATA go with or without their flags: `hooklens {command} gpt2 "
        "val.jsonl ...` is `--model gpt2 --data val.jsonl ...`."
    )


def resolve_model_and_data(args: argparse.Namespace) -> None:
    """Set `args.model` and `args.data` from the positional `MODEL DATA` or the flags
    (else the defaults); a value given both ways is refused (`InputError`), even when
    both say the same."""
    for name, default in (("model", models.DEFAULT_MODEL), ("data", DEFAULT_DATA)):
        positional = getattr(args, f"{name}_positional", None)
        flag = getattr(args, name, None)
        if positional is not None and flag is not None:
            raise InputError(
                f"the {name} is given twice, as {name.upper()} ({positional}) and as "
                f"--{name} ({flag}): give it once, either way (the positionals are MODEL "
                "then DATA)"
            )
        setattr(args, name, next((v for v in (positional, flag) if v is not None), default))


def add_model_class_argument(parser: argparse.ArgumentParser) -> None:
    """`--model-class hooked|bridge`; unset, `models.load` picks the default."""
    parser.add_argument(
        "--model-class",
        choices=models.MODEL_CLASSES,
        help="default: hooked on TransformerLens 3.x, bridge on 4.x (no HookedTransformer)",
    )


def add_processing_argument(parser: argparse.ArgumentParser) -> None:
    """`--processing / --no-processing`; unset, `models.load` picks the model class's own
    default."""
    parser.add_argument(
        "--processing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TransformerLens weight processing (fold_ln, center_writing_weights, "
        "center_unembed); default: on for hooked, off for bridge",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """`--device` of the commands that run under torchrun."""
    parser.add_argument(
        "--device", help="unset: cuda (one GPU per torchrun rank) if present, else cpu"
    )


def add_lens_argument(parser: argparse.ArgumentParser, logit_lens: str) -> None:
    """`--lens LENS`, repeatable; `logit_lens` says what the command does with the logit
    lens, which it always reads ("shown", "evaluated")."""
    parser.add_argument(
        "--lens",
        action="append",
        default=[],
        metavar="LENS",
        help="a tuned lens directory (or a `hooklens train --output` folder), a Jacobian lens "
        "(.pt or directory), or a published "
        "Jacobian lens (a name in TransformerLens's registry, or owner/repo/path.pt on the "
        f"hub); repeatable; the logit lens is always {logit_lens}",
    )


def check_output_file(output: str | Path, example: str) -> None:
    """Refuse an `--output` that is a directory, before any work: `InputError`."""
    if Path(output).is_dir():
        raise InputError(
            f"--output {output} is a directory; give a file name like {Path(output) / example}"
        )


def run_lens(source: str) -> str:
    """`source`, or the lens inside it where it is the `--output` of `hooklens train`
    (a folder with `run.json` and `lens/`): tuned-lens's `eval --lens DIR` names the
    folder its `train --output DIR` wrote."""
    path = Path(source)
    if (path / "run.json").is_file() and (path / "lens").is_dir():
        return str(path / "lens")
    return source


def check_lens_paths(sources: list[str], model_name: str | None = None) -> None:
    """Refuse, before any model loads, a `--lens` that holds no lens
    (`registry.check_lens_source`), then a set of lenses no one model load can read: a
    Jacobian lens reads raw activations, so it cannot sit beside a tuned lens trained on
    TransformerLens-processed weights (each would be refused with the other's flag).
    A `hooklens train` output folder stands for its lens (`run_lens`)."""
    sources = [run_lens(source) for source in sources]
    for source in sources:
        registry.check_lens_source(source, model_name)
    conflict = registry.processing_conflict(sources)
    if conflict is not None:
        processed, raw = conflict
        raise InputError(
            f"--lens {processed} was trained on TransformerLens-processed weights and the "
            f"Jacobian lens {raw} reads raw activations, so no one model load reads "
            "both: evaluate them apart, or train the tuned lens on raw weights (a bridge: "
            "python demos/demo.py --model-class bridge) and pass --model-class bridge"
        )


def in_flag_terms(mismatch: Mismatch) -> str:
    """`mismatch` as the command line says it: its reason, then the flag that loads the
    model the lens fits (`--model NAME`, `--processing`, `--no-processing`)."""
    if mismatch.model_name is not None:
        flag = f"--model {models.loadable_name(mismatch.model_name)}"
    elif mismatch.processing is not None:
        flag = "--processing" if mismatch.processing else "--no-processing"
    else:
        flag = "--model with the checkpoint it was trained on"
    return f"{mismatch.reason}; pass {flag}"


def load_lens(source: str, model: Any) -> Lens:
    """`registry.load_lens` (of the lens inside a `hooklens train` output folder, if
    `source` is one), a mismatch worded in flags."""
    return registry.load_lens(run_lens(source), model, advice=in_flag_terms)


def named_lenses(sources: list[str], model: Any) -> dict[str, Lens]:
    """Each `--lens` loaded for `model`, named by its kind ("tuned lens"), or, when
    several are given, by kind, place and source."""
    lenses: dict[str, Lens] = {}
    for index, source in enumerate(sources):
        lens = load_lens(source, model)
        kind = registry.lens_type_of(lens)
        name = kind.name if kind is not None else type(lens).__name__
        lenses[name if len(sources) == 1 else f"{name} {index + 1} ({source})"] = lens
    return lenses
