"""Low-rank tuned lenses on SmolLM2-135M: held-out KL per layer against the rank.

One streaming pass of the model accumulates the fast fit's moments on `--fit-tokens`
of Wikipedia summaries (the demo's 12,288 by default); each rank r ∈ {8, 32, 128, full}
is then solved in closed form from those moments (`LeastSquaresMoments.solve_low_rank`:
the exact reduced-rank ridge optimum) and evaluated on `--eval-tokens` held-out tokens:
KL(final ‖ lens) per layer, float32 matmuls. Printed: one table of every layer and
rank (the logit lens beside them), the parameters and the solve time of each, and on
paper the float32 memory of the translators of an 80-layer, 8,192-wide model at each
rank. No fine-tune: this measures what the rank costs the closed-form start.

    python benchmarks/lens_rank.py [--fit-tokens 12288] [--eval-tokens 2048]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path

import torch

from hooklens import TunedLens, models
from hooklens.core.precision import retain_freed_memory
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import accumulate_moments, solve_into
from hooklens.training.keep_better import held_out_kl

SEQ_LEN, BATCH = 512, 2
RANKS = (8, 32, 128, None)  # None: full
BIG_LAYERS, BIG_WIDTH = 80, 8192  # the model the issue sizes on paper


def cpu() -> str:
    """The CPU's name, torch's capability and the flags that decide bf16 speed."""
    name, flags = platform.processor() or "unknown CPU", set()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (
        f"{name}; torch capability {torch.backends.cpu.get_cpu_capability()}; flags "
        f"{' '.join(shown) or 'none of avx2/avx512'}; {torch.get_num_threads()} threads"
    )


def translator_parameters(d: int, rank: int | None) -> int:
    return d * d + d if rank is None else 2 * d * rank + d


def token_batches(model, *, held_out: bool, n_tokens: int) -> list[torch.Tensor]:
    texts = (row["text"] for row in load_texts("wikipedia-summaries", streaming=True))
    chunks = pack(split_texts(texts, held_out=held_out), model.tokenizer, SEQ_LEN)
    return list(batches(itertools.islice(chunks, max(1, n_tokens // SEQ_LEN)), BATCH))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit-tokens", type=int, default=12_288)
    parser.add_argument("--eval-tokens", type=int, default=2_048)
    args = parser.parse_args()
    retain_freed_memory()
    torch.set_grad_enabled(False)
    print(cpu(), flush=True)
    model = models.load("smollm2-135m")
    d, n_layers = model.cfg.d_model, model.cfg.n_layers
    fit = token_batches(model, held_out=False, n_tokens=args.fit_tokens)
    held_out = token_batches(model, held_out=True, n_tokens=args.eval_tokens)
    began = time.perf_counter()
    moments = accumulate_moments(model, fit, progress=False)
    pass_seconds = time.perf_counter() - began
    print(
        f"SmolLM2-135M ({n_layers} layers, d_model {d}); fast fit on "
        f"{moments.count:,} tokens: one pass for the moments, {pass_seconds:.1f} s (shared "
        f"by every rank); held-out KL(final ‖ lens) on {sum(b.numel() for b in held_out):,} "
        "tokens, nats, float32\n",
        flush=True,
    )
    columns: dict[str, list[float]] = {}
    rows = []
    # a fresh TunedLens is the logit lens exactly
    columns["logit lens"] = held_out_kl(model, TunedLens.from_model(model), held_out)["lens"]
    for rank in RANKS:
        name = "full" if rank is None else f"r={rank}"
        lens = TunedLens.from_model(model, rank=rank)
        began = time.perf_counter()
        solve_into(lens, moments)
        solve_seconds = time.perf_counter() - began
        began = time.perf_counter()
        columns[name] = held_out_kl(model, lens, held_out)["lens"]
        eval_seconds = time.perf_counter() - began
        rows.append((name, rank, sum(p.numel() for p in lens.parameters()), solve_seconds))
        print(
            f"  {name}: solved in {solve_seconds:.2f} s, evaluated in {eval_seconds:.0f} s",
            flush=True,
        )
    names = list(columns)
    print("\n| layer | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for layer in range(n_layers):
        print(f"| {layer} | " + " | ".join(f"{columns[n][layer]:.3f}" for n in names) + " |")
    means = [sum(columns[n]) / n_layers for n in names]
    print("| mean | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    print(
        f"\n| rank | parameters (SmolLM2, {n_layers} layers) | closed-form solve | "
        f"fit time (pass + solve) | {BIG_LAYERS} × {BIG_WIDTH} translators, float32 |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, rank, count, seconds in rows:
        big = BIG_LAYERS * translator_parameters(BIG_WIDTH, rank) * 4
        print(
            f"| {name} | {count:,} | {seconds:.2f} s | {pass_seconds + seconds:.1f} s | "
            f"{big / 1e9:.3f} GB |"
        )
    moments_bytes = 2 * BIG_LAYERS * BIG_WIDTH**2 * 8
    print(
        f"\nThe fast fit's moments (Σxxᵀ, Σxyᵀ per layer, float64) are d² whatever the rank: "
        f"{moments_bytes / 1e9:.0f} GB for {BIG_LAYERS} × {BIG_WIDTH} (accumulate them a few "
        "layers at a time there)."
    )


if __name__ == "__main__":
    main()
