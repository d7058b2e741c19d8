"""Jacobian-lens fit on SmolLM2-135M: hooklens's exact estimator beside TransformerLens's.

Both fit the same prompts (held-out-free training texts of the offline corpus, cut to
`--seq-len` tokens) on the same raw TransformerBridge, alternating, `--repeats` times;
prints each one's seconds, the speed ratio, and the largest relative difference between
the two sets of matrices. Both run the exact estimator; ours skips the final norm and
unembedding in the forward pass, which is about 1 of the 1 + d_model / dim_batch passes
per prompt: expect parity. (Stopping gradients at the positions before
`skip_first_positions`, which no valid source-to-target path crosses, was measured at
0.95×: the dense backward kernels still compute those rows.)

    python benchmarks/jlens_fit.py [--prompts 2] [--seq-len 64] [--repeats 1]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from hooklens import JacobianLens, models
from hooklens.training.data import load_texts, split_texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--skip-first", type=int, default=16)
    parser.add_argument("--dim-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

    model = models.load("smollm2-135m", model_class="bridge")
    texts = split_texts(load_texts("wikipedia-summaries")["text"], held_out=False)
    long_enough = (t for t in texts if len(model.to_tokens(t)[0]) >= args.seq_len)
    prompts = list(itertools.islice(long_enough, args.prompts))
    settings = dict(max_seq_len=args.seq_len, skip_first_positions=args.skip_first)
    settings["dim_batch"] = args.dim_batch
    fits = {
        "TransformerLens": lambda: TLJacobianLens.fit(
            model, prompts, corpus="wikipedia-summaries", show_progress=False, **settings
        ),
        "hooklens": lambda: JacobianLens.fit(model, prompts, progress=False, **settings),
    }
    times: dict[str, list[float]] = {name: [] for name in fits}
    lenses = {}
    for _ in range(args.repeats):
        for name, fit in fits.items():
            began = time.perf_counter()
            lenses[name] = fit()
            times[name].append(time.perf_counter() - began)
    theirs, ours = lenses["TransformerLens"], lenses["hooklens"]
    gap = max(
        float((ours.jacobian(k).double() - m.double()).abs().max() / m.abs().max())
        for k, m in theirs.jacobians.items()
    )
    capability = torch.backends.cpu.get_cpu_capability()
    print(
        f"SmolLM2-135M bridge, {len(prompts)} prompts × {args.seq_len} tokens, skip "
        f"{args.skip_first}, dim_batch {args.dim_batch}, {torch.get_num_threads()} threads, "
        f"CPU {capability}"
    )
    for name, values in times.items():
        print(f"{name:>16}: {min(values):7.1f} s (best of {len(values)})")
    ratio = min(times["TransformerLens"]) / min(times["hooklens"])
    print(f"TransformerLens / hooklens time: {ratio:.2f}×")
    print(f"largest relative difference of the matrices: {gap:.2e}")


if __name__ == "__main__":
    main()
