"""Options and checks several commands share: `--model`, `--model-class`, `--processing`,
`--device`, `--lens`, `--output`; a lens mismatch worded in flags."""

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
        help="a tuned lens directory, a Jacobian lens (.pt or directory), or a published "
        "Jacobian lens (a name in TransformerLens's registry, or owner/repo/path.pt on the "
        f"hub); repeatable; the logit lens is always {logit_lens}",
    )


def check_output_file(output: str | Path, example: str) -> None:
    """Refuse an `--output` that is a directory, before any work: `InputError`."""
    if Path(output).is_dir():
        raise InputError(
            f"--output {output} is a directory; give a file name like {Path(output) / example}"
        )


def check_lens_paths(sources: list[str], model_name: str | None = None) -> None:
    """Refuse, before any model loads, a `--lens` that holds no lens
    (`registry.check_lens_source`), then a set of lenses no one model load can read: a
    Jacobian lens reads raw activations, so it cannot sit beside a tuned lens trained on
    TransformerLens-processed weights (each would be refused with the other's flag)."""
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
    """`registry.load_lens`, a mismatch worded in flags."""
    return registry.load_lens(source, model, advice=in_flag_terms)


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
