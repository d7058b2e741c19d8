"""Per-layer evaluation of lenses on held-out text, side by side.

For each lens and layer: KL(output ‖ lens), cross-entropy of the next token, entropy,
and top-1 agreement with the model, averaged over tokens; cross-entropy also in bits
per UTF-8 byte of the text. Every number comes from one `PredictionTrajectory` pass.

With `marginals` (`hooklens eval --record-logit-stats`), also each layer's marginal
next-token distribution (`hooklens.stats.LogitStats`, as tuned-lens records it) and
KL(output marginal ‖ lens marginal): how biased a lens is towards some tokens over all
the text, whatever the context.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from safetensors.torch import save_file
from torch import Tensor

from hooklens import comparison, hub, models, precision
from hooklens.artifacts import LensNotFoundError, lens_dir_files
from hooklens.comparison import layer_sums
from hooklens.errors import DataError, InputError, LensMismatchError
from hooklens.files import StagedWrites, output_lock
from hooklens.lenses import JacobianLens, Lens, LogitLens, TunedLens
from hooklens.lenses.jacobian import LENS_TYPE as JACOBIAN_LENS_TYPE
from hooklens.lenses.jacobian import REFERENCE_SUFFIX
from hooklens.model import ModelAdapter, WeightProcessing, _same_model_name
from hooklens.plotting.tokens import decode_token
from hooklens.stats import LogitStats, kl_divergence
from hooklens.training.data import batches, check_data_source, load_texts, pack, split_texts
from hooklens.training.loss import kl_to_target, target_distribution, weight_chunks
from hooklens.trajectory import PredictionTrajectory, next_token_targets


def _bytes_per_token(tokenizer: Any, ids: Tensor) -> int:
    if tokenizer is None:  # a model built from a config: bits per byte are unknown
        return 0
    tokens = tokenizer.convert_ids_to_tokens(ids.reshape(-1).tolist())
    return sum(len(decode_token(token).encode("utf-8", errors="replace")) for token in tokens)


class FewerTokensWarning(UserWarning):
    """The batches held fewer tokens than the evaluation was asked for."""


@dataclass
class LayerMarginals:
    """The marginal next-token distribution of the model and of every lens row.

    `output` sees the model's logits; `lenses[name][layer]` the lens's reading of each
    layer (the output row is `output` itself, for every lens).

    Examples:
        >>> marginals = LayerMarginals()
        >>> results = evaluate_lenses(model, lenses, batches, marginals=marginals)  # doctest: +SKIP
        >>> marginals.kl_to_output()["logit lens"]                  # doctest: +SKIP
    """

    output: LogitStats = field(default_factory=LogitStats)
    lenses: dict[str, list[LogitStats]] = field(default_factory=dict)

    def kl_to_output(self) -> dict[str, list[float]]:
        """`{lens: [KL(output marginal ‖ layer marginal) per layer, then 0 for the output]}`."""
        target = self.output.marginal_probs
        if target is None:
            return {}
        kls = {}
        for name, layers in self.lenses.items():
            per_layer = [
                kl_divergence(target.log(), layer.marginal_probs.log()).item()
                for layer in layers
                if layer.marginal_probs is not None
            ]
            kls[name] = [*per_layer, 0.0]
        return kls

    def tensors(self) -> dict[str, Tensor]:
        """The marginals as float64 `[vocab]` tensors: `output` and `{lens}/{layer}`."""
        tensors = {}
        if self.output.marginal_probs is not None:
            tensors["output"] = self.output.marginal_probs.cpu().contiguous()
        for name, layers in self.lenses.items():
            for layer, stats in enumerate(layers):
                if stats.marginal_probs is not None:
                    tensors[f"{name}/{layer}"] = stats.marginal_probs.cpu().contiguous()
        return tensors

    def all_reduce_(self) -> None:
        """Sum every statistic over the torch.distributed ranks (`LogitStats.all_reduce_`)."""
        self.output.all_reduce_()
        for layers in self.lenses.values():
            for stats in layers:
                stats.all_reduce_()


def _record_marginals(
    marginals: LayerMarginals, name: str, trajectory: PredictionTrajectory
) -> None:
    # One layer's full [tokens, vocab] log-probs at a time: the batch being added. They
    # are normalised again in float64, so each marginal sums to 1 to float64 rounding.
    layers = marginals.lenses.setdefault(name, [LogitStats() for _ in range(trajectory.num_layers)])
    for layer, stats in enumerate(layers):
        stats.update(trajectory.layer_log_probs(layer))


def evaluate_lenses(
    model: Any,
    lenses: Mapping[str, Lens],
    token_batches: Iterable[Tensor],
    *,
    tokens_requested: int | None = None,
    marginals: LayerMarginals | None = None,
) -> dict[str, Any]:
    """`{"tokens", "bytes", "lenses": {name: {metric: [per layer]}}}`, nats per token.

    Each metric is averaged over the tokens that have it (`hooklens.comparison`):
    cross-entropy over the tokens with a next token, the others over every token.

    Args:
        model: the model the lenses read.
        lenses: `{name: lens}`, each evaluated on every batch.
        token_batches: `[batch, pos]` token ids.
        tokens_requested: how many tokens the batches were meant to hold; recorded as
            `"tokens_requested"`, and `FewerTokensWarning` says when they held fewer.
        marginals: filled with each lens row's marginal distribution (`LayerMarginals`);
            each lens's metrics then include `marginal_kl_to_output`.
    """
    sums: dict[str, dict[str, list[np.ndarray]]] = {}
    n_tokens = n_bytes = 0
    # Cache only the residuals the lenses read: a whole cache (attention patterns, MLP
    # activations) is ~2.8 GB per 1,024 SmolLM2 tokens, and it is dropped before the
    # next batch runs, so two never coexist.
    adapter = ModelAdapter(model)
    names = {
        name for lens in lenses.values() for name in adapter.residual_hook_names(lens.component)
    }
    for tokens in token_batches:
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, names_filter=names.__contains__)
        targets = next_token_targets(tokens)
        n_tokens += tokens.numel()
        n_bytes += _bytes_per_token(model.tokenizer, tokens[..., 1:])
        if marginals is not None:
            marginals.output.update(logits)
        for name, lens in lenses.items():
            trajectory = PredictionTrajectory.from_lens_and_cache(
                lens, tokens, cache, logits, targets=targets
            )
            totals = sums.setdefault(name, {})
            for metric, (total, count) in layer_sums(trajectory).items():
                previous = totals.get(metric, [0.0, 0])
                totals[metric] = [previous[0] + total, previous[1] + count]
            if marginals is not None:
                _record_marginals(marginals, name, trajectory)
            del trajectory
        del logits, cache
    results: dict[str, Any] = {"tokens": n_tokens}
    if tokens_requested is not None:
        results["tokens_requested"] = tokens_requested
        if n_tokens < tokens_requested:
            warnings.warn(
                FewerTokensWarning(
                    f"evaluated {n_tokens} of the {tokens_requested} tokens asked for: "
                    "the batches held no more"
                ),
                stacklevel=2,
            )
    results |= {"bytes": n_bytes, "lenses": {}}
    marginal_kls = marginals.kl_to_output() if marginals is not None else {}
    for name, totals in sums.items():
        per_token = {m: total / np.maximum(count, 1) for m, (total, count) in totals.items()}
        per_token["cross_entropy_bits_per_byte"] = (
            totals["cross_entropy"][0] / math.log(2) / n_bytes
            if n_bytes
            else per_token["cross_entropy"] * math.nan
        )
        if name in marginal_kls:
            per_token["marginal_kl_to_output"] = np.array(marginal_kls[name])
        results["lenses"][name] = {
            m: [round(float(v), 6) for v in vs] for m, vs in per_token.items()
        }
    return results


def layer_transfer(
    model: Any,
    lens: TunedLens,
    token_batches: Iterable[Tensor],
    *,
    matmul_dtype: str | torch.dtype = "auto",
) -> np.ndarray:
    """`[lens layer i, residual layer j]`: mean KL(output ‖ translator i applied to layer j).

    The diagonal is the lens as trained; off the diagonal, how well one layer's
    translator reads another layer's residual (how much the layers' bases differ).
    Costs n_layers² unembeddings per token, in `matmul_dtype` ("auto": bf16 where the
    device runs it natively fast, float32 otherwise; `hooklens.precision`).
    """
    adapter = lens.adapter
    names = set(adapter.residual_hook_names(lens.component))
    totals = np.zeros((lens.n_layers, lens.n_layers))
    W_U = lens.unembed.W_U
    w_chunks = weight_chunks(W_U, 8192, precision.matmul_dtype(matmul_dtype, W_U.device))
    n_rows = 0
    with torch.no_grad():
        for tokens in token_batches:
            logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            flat = logits.float().reshape(-1, logits.shape[-1])
            target, neg_entropy = target_distribution(flat)
            rows = target.shape[0]
            for j in range(lens.n_layers):
                hidden = cache[adapter.hook_name(lens.component, j)].reshape(rows, -1)
                for i in range(lens.n_layers):
                    translated = lens.transform_hidden(hidden, i)
                    kl = kl_to_target(
                        lens.unembed, translated, target, neg_entropy, w_chunks=w_chunks
                    )
                    totals[i, j] += kl.item() * rows
            n_rows += rows
    return totals / max(n_rows, 1)


def transfer_figure(matrix: np.ndarray, name: str) -> go.Figure:
    return go.Figure(
        go.Heatmap(z=matrix, colorscale="Viridis", colorbar={"title": "KL (nats)"}),
        layout={
            "title": f"layer transfer of {name}: KL(output ‖ translator i on layer j)",
            "xaxis_title": "residual of layer j",
            "yaxis_title": "translator of layer i",
        },
    )


def figure(results: Mapping[str, Any], metric: str = "kl_to_output") -> go.Figure:
    """One line per lens: `metric` against the layer (the last point is the output)."""
    return comparison.figure(
        results["lenses"],
        metric,
        title=f"{comparison.TITLES.get(metric, metric)} per layer "
        f"({results['tokens']} held-out tokens)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lens",
        action="append",
        default=[],
        metavar="LENS",
        help="a tuned lens directory, a Jacobian lens (.pt or directory), or a published "
        "Jacobian lens (a name in TransformerLens's registry, or owner/repo/path.pt on the "
        "hub); repeatable; the logit lens is always evaluated",
    )
    parser.add_argument(
        "--model",
        default=models.DEFAULT_MODEL,
        help="model name (embedded, TransformerLens or hub)",
    )
    models.add_model_class_argument(parser)
    models.add_processing_argument(parser)
    parser.add_argument(
        "--data",
        default="wikipedia-summaries",
        help="held-out text: a .jsonl, .json, .txt or .parquet file (or glob), a hub dataset, "
        "or wikipedia-summaries",
    )
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
        help="for the transfer matrix; auto: bf16 only where the device runs it fast",
    )
    parser.add_argument(
        "--record-logit-stats",
        action="store_true",
        help="also record each lens layer's marginal next-token distribution over the "
        "evaluated tokens (and the model output's): written beside --output as "
        f"{LOGIT_STATS_SUFFIX} (float64 [vocab] tensors 'output' and 'LENS/LAYER'); the "
        "JSON gains marginal_kl_to_output, KL(output marginal ‖ lens marginal) per layer",
    )


LOGIT_STATS_SUFFIX = ".logit-stats.safetensors"


def logit_stats_file(output: str | Path) -> Path:
    """Where `--record-logit-stats` writes the marginals: beside the results JSON."""
    output = Path(output)
    return output.with_name(output.stem + LOGIT_STATS_SUFFIX)


def check_output_file(output: str | Path, example: str) -> None:
    """Refuse an `--output` that is a directory, before any work: `InputError`."""
    if Path(output).is_dir():
        raise InputError(
            f"--output {output} is a directory; give a file name like {Path(output) / example}"
        )


FIGURES_SUFFIX = ".html"


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
    check_output_file(output, "eval.json")
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


def is_jacobian_lens(path: str | Path) -> bool:
    """Whether `path` holds a Jacobian lens: a `.pt` file (the reference / TransformerLens
    format) or a directory saved by `JacobianLens.save`."""
    path = Path(path)
    if path.suffix == REFERENCE_SUFFIX:
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("lens_type") == JACOBIAN_LENS_TYPE


PROCESSING_FLAGS = tuple(flag.name for flag in dataclasses.fields(WeightProcessing))
"""The fingerprint entries that record TransformerLens weight processing."""


def check_lens_path(path: str, model_name: str | None = None) -> None:
    """Refuse, before any model loads, a `--lens` that holds no lens.

    A `--lens` that is no local path may name a published Jacobian lens (a short name in
    TransformerLens's registry, or `owner/repo/path.pt` on the hub): it is resolved and
    downloaded here, so an unknown name, a registry lens for another model than
    `model_name`, or an uncached file offline is said before the model loads.
    """
    if not Path(path).exists():
        try:
            found = hub.jacobian_lens_file(path, model_name=model_name)
        except LensNotFoundError:
            if os.sep in path or Path(path).suffix:
                found = None  # a path, not a name: say what is missing there, below
            else:
                raise
        if isinstance(found, hub.HubFile):
            hub.download_hub_file(found)
            return
    if Path(path).suffix == REFERENCE_SUFFIX:
        if not Path(path).is_file():
            raise LensNotFoundError(f"no Jacobian lens at {path}: the file does not exist")
        return
    lens_dir_files(path)


def check_lens_paths(sources: list[str], model_name: str | None = None) -> None:
    """`check_lens_path` for each `--lens`, then refuse a set of lenses no one model
    load can read: a Jacobian lens reads raw activations, so it cannot sit beside a
    tuned lens trained on TransformerLens-processed weights (each would be refused with
    the other's flag)."""
    for source in sources:
        check_lens_path(source, model_name)
    jacobian = [s for s in sources if not Path(s).exists() or is_jacobian_lens(s)]
    processed = [s for s in sources if s not in jacobian and _trained_on_processed(Path(s))]
    if jacobian and processed:
        raise InputError(
            f"--lens {processed[0]} was trained on TransformerLens-processed weights and the "
            f"Jacobian lens {jacobian[0]} reads raw activations, so no one model load reads "
            "both: evaluate them apart, or train the tuned lens on raw weights (a bridge: "
            "python demos/demo.py --model-class bridge) and pass --model-class bridge"
        )


def _trained_on_processed(directory: Path) -> bool:
    """Whether the tuned lens saved in `directory` records TransformerLens weight processing."""
    try:
        saved = json.loads((directory / "config.json").read_text()).get("fingerprint") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return any(saved.get(flag) for flag in PROCESSING_FLAGS)


def load_lens(directory: str, model: Any) -> Lens:
    """The tuned or Jacobian lens at `directory` for `model`; a lens for another model,
    or for other weight processing, is refused in one line naming the flag that loads
    the model it fits (`--model NAME`, `--processing`, `--no-processing`). A `directory`
    that is no local path is a published Jacobian lens (`check_lens_path`)."""
    if not Path(directory).exists() or is_jacobian_lens(directory):
        try:
            return JacobianLens.load(directory, model=model)
        except LensMismatchError as error:
            if "raw activations" not in str(error):
                raise
            raise LensMismatchError(
                f"{directory}: a Jacobian lens reads raw activations, and the model was "
                "loaded with TransformerLens's weight processing; pass --no-processing"
            ) from error
    try:
        return TunedLens.load(directory, model=model)
    except LensMismatchError as error:
        advice = _mismatch_advice(Path(directory), ModelAdapter(model))
        if advice is None:
            raise
        raise LensMismatchError(f"{directory}: {advice}") from error


def _mismatch_advice(directory: Path, adapter: ModelAdapter) -> str | None:
    """What differs between the lens in `directory` and the model, in command-line terms."""
    try:
        config = json.loads((directory / "config.json").read_text())
        saved = config.get("fingerprint") or {}
        name = config.get("base_model_name_or_path") or saved["model_name"]
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    sizes = {"d_model": config.get("d_model"), "n_layers": config.get("num_hidden_layers")}
    sizes |= {key: saved[key] for key in ("d_model", "n_layers", "d_vocab") if key in saved}
    found = {key: getattr(adapter, key) for key in sizes}
    if not _same_model_name(name, adapter.model_name) or sizes != found:
        return (
            f"this lens was trained for {name!r}, the model is {adapter.model_name!r}; "
            f"pass --model {models.loadable_name(name)}"
        )
    actual = adapter.processing
    if saved and any(saved.get(flag) != getattr(actual, flag) for flag in PROCESSING_FLAGS):
        was = "processed" if any(saved.get(flag) for flag in PROCESSING_FLAGS) else "unprocessed"
        flag = "--processing" if was == "processed" else "--no-processing"
        return (
            f"this lens was trained on {was} weights (TransformerLens's fold_ln, "
            "center_writing_weights, center_unembed), the model was loaded "
            f"{'without' if was == 'processed' else 'with'} them; pass {flag}"
        )
    if not saved and actual.center_writing_weights:
        return (
            "this tuned-lens artifact reads the raw residual stream, and the model's "
            "writing weights were centred by TransformerLens; pass --no-processing"
        )
    if saved:
        return (
            f"this lens was trained on another checkpoint of {name!r} (its final norm or "
            "unembedding differ from this model's); pass --model with the checkpoint it was "
            "trained on"
        )
    return None


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any model or data loads, settings `run` cannot use."""
    for flag, minimum in (("tokens", 1), ("seq_len", 2), ("batch_size", 1), ("transfer_tokens", 0)):
        value = getattr(args, flag)
        if value < minimum:
            raise InputError(f"--{flag.replace('_', '-')} must be at least {minimum}, got {value}")
    check_output_files(args.output, logit_stats=args.record_logit_stats)
    check_data_source(args.data, args.text_field)
    check_lens_paths(args.lens, args.model)  # a missing lens is said before the model loads


def lens_label(source: str) -> str:
    """A short column name: the last two parts of a local path, or the name as given."""
    if not Path(source).exists():
        return source  # a published lens's name
    path = Path(source).resolve()
    return f"{path.parent.name}/{path.name}"


def texts_of(args: argparse.Namespace) -> Iterator[str]:
    return (row[args.text_field] for row in load_texts(args.data, streaming=True))


def held_out_token_count(args: argparse.Namespace, tokenizer: Any) -> int:
    """The tokens `pack` reads from the held-out split (each text's, plus a separator)."""
    separator = int(tokenizer.eos_token_id is not None)
    return sum(
        len(tokenizer(text, add_special_tokens=False)["input_ids"]) + separator
        for text in split_texts(texts_of(args), held_out=True)
    )


def held_out_chunks(args: argparse.Namespace, tokenizer: Any) -> Iterator[Tensor]:
    """The held-out `--seq-len` chunks; `DataError`, before any work, if there is none."""
    chunks = pack(split_texts(texts_of(args), held_out=True), tokenizer, args.seq_len)
    first = next(chunks, None)
    if first is None:
        found = held_out_token_count(args, tokenizer)
        raise DataError(
            f"the held-out split of {args.data} has {found} tokens, fewer than one "
            f"--seq-len chunk of {args.seq_len}; pass a smaller --seq-len or more text"
        )
    return itertools.chain([first], chunks)


def run(args: argparse.Namespace) -> int:
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
        lenses[lens_label(directory)] = load_lens(directory, model)
    chunks = held_out_chunks(args, model.tokenizer)
    n_chunks = max(1, args.tokens // args.seq_len)
    marginals = LayerMarginals() if args.record_logit_stats else None
    results = evaluate_lenses(
        model,
        lenses,
        batches(itertools.islice(chunks, n_chunks), args.batch_size),
        marginals=marginals,
    )
    results = {"tokens": results["tokens"], "tokens_requested": args.tokens, **results}
    if results["tokens"] < n_chunks * args.seq_len:
        print(
            f"hooklens eval: evaluated {results['tokens']} of the {args.tokens} tokens asked "
            f"for (--tokens): the held-out split of {args.data} holds only "
            f"{results['tokens'] // args.seq_len} chunks of {args.seq_len} tokens",
            file=sys.stderr,
        )
    figures = [figure(results, metric) for metric in comparison.SHOWN]
    if args.transfer_tokens:
        n_transfer = max(1, args.transfer_tokens // args.seq_len)
        results["transfer"] = {}
        for name, lens in lenses.items():
            if not isinstance(lens, TunedLens):
                continue  # the logit lens has no translators to swap
            chunks = pack(split_texts(texts_of(args), held_out=True), model.tokenizer, args.seq_len)
            matrix = layer_transfer(
                model,
                lens,
                batches(itertools.islice(chunks, n_transfer), args.batch_size),
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
    print(f"{results['tokens']} held-out tokens, the mean per token of each:")
    for metric in comparison.SHOWN:
        print(f"\n{comparison.TITLES[metric]}\n")
        print(comparison.markdown_table(results["lenses"], metric))
    print()
    written = [f"{path} ({kind})" for kind, path in files.items()]
    print(f"wrote {', '.join(written[:-1])} and {written[-1]}")
    return 0
