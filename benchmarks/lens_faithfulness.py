"""Causal-basis faithfulness of the logit lens and a tuned lens on SmolLM2-135M: at a few
layers, the lens's k most causal residual directions (fitted on train-split text), each
mean-ablated in the model on held-out text, and Spearman's ρ between how much each moves
the lens and how much it moves the model's output (KL, nats per token).

The tuned lens is `--lens PATH`, else `demo-output/lens` (what `make demo` saves), else a
quick closed-form fit (`fit_tuned_lens`, `--tuned-fit-tokens` tokens) made here.

Defaults (k=6 directions, 20 L-BFGS iterations each, bases fitted on 256 tokens,
effects measured on 512 held-out tokens, layers 6, 14, 22) keep the run under about ten
minutes on two CPU cores; the whole run's minutes and the CPU are printed with the table.

    python benchmarks/lens_faithfulness.py [--layers 6 14 22] [--k 6] [--max-iter 20]
        [--fit-tokens 256] [--eval-tokens 512] [--lens PATH] [--model-class hooked|bridge]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path

import torch

from hooklens import LogitLens, TunedLens, models
from hooklens.causal.faithfulness import faithfulness_table, lens_faithfulness
from hooklens.cli.options import add_model_class_argument
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens

SEQ_LEN = 128
DEMO_LENS = Path("demo-output/lens")


def token_rows(model, *, held_out: bool, n_tokens: int, skip: int = 0) -> torch.Tensor:
    """`[n_tokens // SEQ_LEN, SEQ_LEN]` ids of Wikipedia summaries (train or held out)."""
    texts = (row["text"] for row in load_texts("wikipedia-summaries", streaming=True))
    chunks = pack(split_texts(texts, held_out=held_out), model.tokenizer, SEQ_LEN)
    rows = list(itertools.islice(chunks, skip, skip + max(1, n_tokens // SEQ_LEN)))
    return torch.stack(rows)


def tuned_lens(model, path: str | None, fit_tokens: int) -> tuple[TunedLens, str]:
    chosen = Path(path) if path else DEMO_LENS if DEMO_LENS.exists() else None
    if chosen is not None:
        return TunedLens.load(chosen, model), f"tuned lens from {chosen}"
    rows = token_rows(model, held_out=False, n_tokens=fit_tokens, skip=64)
    with torch.no_grad():
        lens = fit_tuned_lens(model, batches(iter(rows), 4), progress=False)
    return lens, f"tuned lens fitted here in closed form on {rows.numel()} tokens"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 14, 22])
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--fit-tokens", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=512)
    parser.add_argument("--tuned-fit-tokens", type=int, default=8192)
    parser.add_argument("--lens", help="a saved tuned lens (default: demo-output/lens)")
    add_model_class_argument(parser)
    args = parser.parse_args()

    began = time.perf_counter()
    model = models.load(models.DEFAULT_MODEL, model_class=args.model_class)
    tuned, source = tuned_lens(model, args.lens, args.tuned_fit_tokens)
    fit = token_rows(model, held_out=False, n_tokens=args.fit_tokens)
    held_out = token_rows(model, held_out=True, n_tokens=args.eval_tokens)
    results = [
        lens_faithfulness(
            model,
            lens,
            held_out,
            args.layers,
            args.k,
            fit_tokens=fit,
            max_iter=args.max_iter,
            label=label,
        )
        for label, lens in (("logit lens", LogitLens.from_model(model)), ("tuned lens", tuned))
    ]
    minutes = (time.perf_counter() - began) / 60
    print(
        f"\nSmolLM2-135M as {type(model).__name__}; {source}; k={args.k} directions per "
        f"layer ({args.max_iter} L-BFGS iterations each) fitted on {fit.numel()} tokens, "
        f"mean-ablated on {held_out.numel()} held-out tokens; KL in nats per token\n"
    )
    print(faithfulness_table(*results))
    print(
        f"\n{minutes:.1f} min in all on {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )


if __name__ == "__main__":
    main()
