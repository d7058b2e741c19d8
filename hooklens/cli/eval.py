"""`hooklens eval`: per-layer numbers of every `--lens` on held-out text, written as JSON
with a page of figures beside it (`hooklens.evaluation`).

The JSON records its own `provenance` (versions, model, the evaluation's settings) and
`lens_provenance`, what each lens file records (null where it records none); both are
printed before the tables."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file

from hooklens import models
from hooklens.artifacts import StagedWrites, output_lock
from hooklens.artifacts.provenance import PROVENANCE_KEY, current_provenance, provenance_lines
from hooklens.cli import options
from hooklens.core import precision
from hooklens.errors import InputError
from hooklens.evaluation import held_out, patchscopes, per_layer
from hooklens.evaluation.held_out import (
    LayerMarginals,
    evaluate_lenses,
    held_out_chunks,
    layer_transfer,
    texts_of,
    transfer_figure,
)
from hooklens.lenses import Lens, LogitLens, TunedLens
from hooklens.training.data import batches, check_data_source, pack, split_texts

LOGIT_STATS_SUFFIX = ".logit-stats.safetensors"
FIGURES_SUFFIX = ".html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_lens_argument(parser, "evaluated")
    options.add_model_and_data_arguments(
        parser,
        "eval",
        "model name (embedded, TransformerLens or hub)",
        "held-out text: a .jsonl, .json, .txt or .parquet file (or glob), a hub dataset, "
        "or wikipedia-summaries",
    )
    options.add_model_class_argument(parser)
    options.add_processing_argument(parser)
    parser.add_argument("--text-field", default="text", help="the field of each record to read")
    parser.add_argument(
        "--tokens",
        type=int,
        default=4096,
        help="held-out tokens to evaluate, in whole --seq-len chunks (rounded down, at least "
        "one); fewer when the held-out split runs out, with a warning",
    )
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=2, help="sequences per forward pass")
    parser.add_argument(
        "--output",
        default="hooklens-eval.json",
        help="the results file (JSON; not .html); its figures go beside it with the suffix "
        ".html (eval.json: eval.html)",
    )
    parser.add_argument(
        "--transfer-tokens",
        type=int,
        default=0,
        help="also compute each tuned lens's layer-transfer matrix on this many tokens",
    )
    parser.add_argument(
        "--matmul-dtype",
        choices=precision.MATMUL_DTYPES,
        default="auto",
        help="for the transfer matrix; auto: bf16 only where the device runs it fast, "
        "float16 on GPUs without bf16 (T4)",
    )
    parser.add_argument(
        "--patchscope",
        type=int,
        default=0,
        metavar="POSITIONS",
        help="also read the token-identity Patchscope at this many held-out positions (a "
        "seeded sample: each costs a target run per layer), as the column "
        f"'{patchscopes.NAME}'; 0: none",
    )
    parser.add_argument(
        "--record-logit-stats",
        action="store_true",
        help="also record each lens layer's marginal next-token distribution over the "
        "evaluated tokens (and the model output's): written beside --output as "
        f"{LOGIT_STATS_SUFFIX} (float64 [vocab] tensors 'output' and 'LENS/LAYER'); the "
        "JSON gains marginal_kl_to_output, KL(output marginal ‖ lens marginal) per layer",
    )


def logit_stats_file(output: str | Path) -> Path:
    """Where `--record-logit-stats` writes the marginals: beside the results JSON."""
    output = Path(output)
    return output.with_name(output.stem + LOGIT_STATS_SUFFIX)


def output_files(output: str | Path, *, logit_stats: bool = False) -> dict[str, Path]:
    """What `hooklens eval --output OUTPUT` writes: `{"results": OUTPUT, "figures":
    OUTPUT with the suffix .html, "logit stats": beside them (with logit_stats)}`."""
    output = Path(output)
    files = {"results": output, "figures": output.with_suffix(FIGURES_SUFFIX)}
    if logit_stats:
        files["logit stats"] = logit_stats_file(output)
    return files


def check_output_files(output: str | Path, *, logit_stats: bool = False) -> dict[str, Path]:
    """Refuse, before any work, an `--output` whose files would overwrite one another (the
    results named `.html`, where the figures page goes) or land on a directory."""
    options.check_output_file(output, "eval.json")
    files = output_files(output, logit_stats=logit_stats)
    seen: dict[str, str] = {}
    for kind, path in files.items():
        key = os.path.normcase(str(path.resolve())).casefold()  # ev.HTML is ev.html on macOS
        if key in seen:
            raise InputError(
                f"--output {output}: the {kind} would be written over the {seen[key]}, since "
                f"the figures page goes beside the results with the suffix {FIGURES_SUFFIX}; "
                f"give the results a .json name, like --output {Path(output).with_suffix('.json')}"
            )
        seen[key] = kind
        if kind != "results" and path.is_dir():
            raise InputError(
                f"--output {output}: its {kind} go to {path}, which is a directory; move it "
                "or choose another --output"
            )
    return files


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any model or data loads, settings `run` cannot use."""
    minimums = (
        ("tokens", 1), ("seq_len", 2), ("batch_size", 1), ("transfer_tokens", 0), ("patchscope", 0)
    )  # fmt: skip
    for flag, minimum in minimums:
        value = getattr(args, flag)
        if value < minimum:
            raise InputError(f"--{flag.replace('_', '-')} must be at least {minimum}, got {value}")
    check_output_files(args.output, logit_stats=args.record_logit_stats)
    check_data_source(args.data, args.text_field)
    options.check_lens_paths(args.lens, args.model)  # a missing lens is said before the model loads


def lens_label(source: str) -> str:
    """A short column name: the last two parts of a local path, or the name as given."""
    if not Path(source).exists():
        return source  # a published lens's name
    path = Path(source).resolve()
    return f"{path.parent.name}/{path.name}"


def training_check(source: str) -> dict[str, Any] | None:
    """The held-out check that `hooklens train` recorded for the lens in `source` (its
    run's `history.json`, beside the lens folder: `{"tokens", "layers": [{layer,
    start_kl, tuned_kl, kept}]}`), or None when there is none."""
    history = Path(source).parent / "history.json"
    if not Path(source).is_dir() or not history.is_file():
        return None
    try:
        record = json.loads(history.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    check = record.get("held_out") if isinstance(record, dict) else None
    if not isinstance(check, dict) or not isinstance(check.get("layers"), list):
        return None
    return check


def training_table(check: dict[str, Any]) -> str:
    """The start and the fine-tune of each layer, as the training run measured them."""
    lines = ["| layer | start | fine-tune | kept |", "|---:|---:|---:|:---|"]
    for layer in check["layers"]:
        lines.append(
            f"| {layer['layer']} | {layer['start_kl']:.3f} | {layer['tuned_kl']:.3f} | "
            f"{layer['kept']} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options.resolve_model_and_data(args)
    check_arguments(args)
    files = output_files(args.output, logit_stats=args.record_logit_stats)
    lock = output_lock(
        files.values(),
        "hooklens eval",
        advice="wait for that run to end, or choose another --output",
        on_stale=lambda message: print(f"hooklens eval: {message}", file=sys.stderr),
    )
    with lock:  # before the model loads: a second eval into these files stops at once
        return _evaluate(args, files)


def _evaluate(args: argparse.Namespace, files: dict[str, Path]) -> int:
    model = models.load(args.model, model_class=args.model_class, processing=args.processing)
    lenses: dict[str, Lens] = {"logit lens": LogitLens.from_model(model)}
    for directory in args.lens:
        lenses[lens_label(directory)] = options.load_lens(directory, model)
    n_chunks = max(1, args.tokens // args.seq_len)
    chunks = list(  # a list: --patchscope reads them again
        itertools.islice(
            held_out_chunks(args.data, model.tokenizer, args.seq_len, args.text_field), n_chunks
        )
    )
    marginals = LayerMarginals() if args.record_logit_stats else None
    results = evaluate_lenses(
        model, lenses, batches(iter(chunks), args.batch_size), marginals=marginals
    )
    results = {"tokens": results["tokens"], "tokens_requested": args.tokens, **results}
    if args.patchscope:
        started = time.perf_counter()
        scope = patchscopes.evaluate_patchscope(model, chunks, positions=args.patchscope)
        results["lenses"][patchscopes.NAME] = scope.pop("metrics")
        results["patchscope"] = scope | {"seconds": round(time.perf_counter() - started, 1)}
    checks = {lens_label(d): c for d in args.lens if (c := training_check(d)) is not None}
    if checks:  # what training kept per layer: the start or the fine-tune
        results["training_held_out"] = checks
    settings = {
        "data": str(args.data),
        "tokens": args.tokens,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "processing": args.processing,
    }
    results[PROVENANCE_KEY] = current_provenance(model, settings=settings)
    results["lens_provenance"] = {name: lens.provenance for name, lens in lenses.items()}
    if results["tokens"] < n_chunks * args.seq_len:
        print(
            f"hooklens eval: evaluated {results['tokens']} of the {args.tokens} tokens asked "
            f"for (--tokens): the held-out split of {args.data} holds only "
            f"{results['tokens'] // args.seq_len} chunks of {args.seq_len} tokens",
            file=sys.stderr,
        )
    figures = [held_out.figure(results, metric) for metric in per_layer.SHOWN]
    if args.transfer_tokens:
        n_transfer = max(1, args.transfer_tokens // args.seq_len)
        results["transfer"] = {}
        for name, lens in lenses.items():
            if not isinstance(lens, TunedLens):
                continue  # the logit lens has no translators to swap
            texts = texts_of(args.data, args.text_field)
            transfer = pack(split_texts(texts, held_out=True), model.tokenizer, args.seq_len)
            matrix = layer_transfer(
                model,
                lens,
                batches(itertools.islice(transfer, n_transfer), args.batch_size),
                matmul_dtype=args.matmul_dtype,
            )
            results["transfer"][name] = np.round(matrix, 6).tolist()
            figures.append(transfer_figure(matrix, name))
    output = files["results"]
    html = [f.to_html(full_html=False, include_plotlyjs=i == 0) for i, f in enumerate(figures)]
    # All or nothing: a failed write (a full disk) replaces none of the earlier files, and
    # the results, which name the logit-stats file, are renamed into place last.
    with StagedWrites() as staged:
        if marginals is not None:
            metadata = {"tokens": str(marginals.output.n), "results": output.name}
            tensors = marginals.tensors()
            staged.stage(files["logit stats"], lambda tmp: save_file(tensors, tmp, metadata))
            results["logit_stats"] = {
                "file": files["logit stats"].name,
                "tokens": marginals.output.n,
            }
        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>\n"
            + "\n".join(html)
            + "\n</body></html>\n"
        )
        staged.stage(files["figures"], lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
        text = json.dumps(results, indent=1) + "\n"
        staged.stage(output, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    for name, lens in lenses.items():
        if name != "logit lens":
            print(f"{name}: {provenance_lines(lens.provenance)}")
    print(f"{results['tokens']} held-out tokens, the mean per token of each:")
    if "patchscope" in results:
        scope = results["patchscope"]
        print(
            f"({patchscopes.NAME}: {scope['positions']} of those positions, a seeded "
            f"sample, in {scope['seconds']} s; top-1 agreement is its precision@1)"
        )
    for metric in per_layer.SHOWN:
        print(f"\n{per_layer.TITLES[metric]}\n")
        print(per_layer.markdown_table(results["lenses"], metric))
    for name, check in checks.items():
        print(
            f"\n{name}: held-out KL(final ‖ lens) of its start and its fine-tune, as "
            f"training measured them on {check.get('tokens', '?')} tokens (nats)\n"
        )
        print(training_table(check))
    print()
    written = [f"{path} ({kind})" for kind, path in files.items()]
    print(f"wrote {', '.join(written[:-1])} and {written[-1]}")
    return 0
