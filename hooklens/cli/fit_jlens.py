"""`hooklens fit-jlens`: fit a Jacobian lens with the exact estimator, resumable, under
torchrun too (`JacobianLens.fit`)."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from hooklens import models
from hooklens._checks import positive_int
from hooklens.cli import options
from hooklens.cli.train import owned_output
from hooklens.core import distributed
from hooklens.errors import InputError, MissingFileError, OutputExistsError
from hooklens.lenses import JacobianLens
from hooklens.lenses.jacobian_estimator import check_fit_lengths, checkpoint_path
from hooklens.training.data import check_data_source, load_texts, split_texts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model_argument(parser, "model name")
    options.add_model_class_argument(parser)
    parser.add_argument(
        "--data", default="wikipedia-summaries", help="hub dataset or local file(s) of text"
    )
    parser.add_argument("--text-field", default="text", help="the field holding the text")
    parser.add_argument(
        "--output", required=True, help="the lens: a .pt file (reference format) or a directory"
    )
    parser.add_argument("--prompts", type=int, default=100, help="training texts to fit on")
    parser.add_argument("--max-seq-len", type=int, default=128, help="tokens per prompt")
    parser.add_argument(
        "--skip-first", type=int, default=16, help="leading positions left out of the mean"
    )
    parser.add_argument("--dim-batch", type=int, default=8, help="output dimensions per backward")
    parser.add_argument(
        "--source-layers", type=int, nargs="+", help="block outputs to fit (default: all)"
    )
    parser.add_argument("--checkpoint-every", type=int, default=10, help="prompts between saves")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted fit: the same --model, --data, --max-seq-len, "
        "--skip-first and --source-layers (checked), at least as many --prompts; "
        "--dim-batch and the number of torchrun processes may change",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: remove the fit checkpoint of an earlier run now and replace "
        "--output when the new lens is fitted (the old lens stays until then)",
    )
    options.add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Fit a Jacobian lens on the first `--prompts` training texts.

    One fit at a time owns `--output` (and the checkpoint named after it), before the
    fit's own checks: a fit finishing meanwhile could otherwise be replaced. Under
    `torchrun --nproc_per_node N -m hooklens fit-jlens ...` the N processes share the
    prompts (see `JacobianLens.fit`); rank 0 writes the checkpoint and the lens.
    """
    with owned_output([Path(args.output)], "hooklens fit-jlens"):
        return _fit(args)


def _fit(args: argparse.Namespace) -> int:
    for flag in ("prompts", "dim_batch", "checkpoint_every"):
        positive_int(getattr(args, flag), f"--{flag.replace('_', '-')}")
    # From the arguments alone, before the model loads and before anything is written.
    check_fit_lengths(args.max_seq_len, args.skip_first, names=("--max-seq-len", "--skip-first"))
    if args.resume and args.overwrite:
        raise InputError(
            "--resume continues the fit in the checkpoint, --overwrite starts over: pick one"
        )
    device = distributed.command_device(args.device)
    distributed.init_from_environment()  # gloo: the fit reduces CPU tensors
    output, checkpoint = Path(args.output), checkpoint_path(args.output)
    # Every rank checks: none writes before all have reached the fit's first reduction.
    if args.resume and not checkpoint.is_file():
        raise MissingFileError(
            f"no fit to resume: {checkpoint} does not exist. Run without --resume to start the fit"
        )
    if not (args.resume or args.overwrite) and (output.exists() or checkpoint.exists()):
        raise OutputExistsError(
            f"{output if output.exists() else checkpoint} exists: pass --resume to continue "
            "its fit, --overwrite to start over and replace it, or choose another --output"
        )
    check_data_source(args.data, args.text_field)
    if args.overwrite:
        # Once the arguments are checked, and not at the first new checkpoint: a run
        # that dies before then must not leave the old checkpoint for --resume.
        distributed.barrier()  # every rank has checked the checkpoint before it goes
        if distributed.is_primary():
            checkpoint.unlink(missing_ok=True)
        distributed.barrier()
    model = models.load(
        args.model,
        model_class=args.model_class,
        processing=False,
        device=distributed.rank_device(device),
    )
    texts = (row[args.text_field] for row in load_texts(args.data, streaming=True))
    prompts = list(itertools.islice(split_texts(texts, held_out=False), args.prompts))
    lens = JacobianLens.fit(
        model,
        prompts,
        source_layers=args.source_layers,
        max_seq_len=args.max_seq_len,
        skip_first_positions=args.skip_first,
        dim_batch=args.dim_batch,
        checkpoint=checkpoint,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
        metadata={"corpus": str(args.data)},
    )
    if distributed.is_primary():
        lens.save(output)
        checkpoint.unlink(missing_ok=True)
        processes = f" on {distributed.world_size()} processes" * (distributed.world_size() > 1)
        print(f"fitted {output}{processes}: {lens!r}")
    distributed.barrier()  # no rank ends before the lens is whole
    return 0
