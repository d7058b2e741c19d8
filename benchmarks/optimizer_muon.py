"""Muon against Adam on SmolLM2-135M, from the same fast-fit start on the same batches.

The fast fit (closed form, `--fit-tokens` of Wikipedia summaries) is the start of every
run; each optimiser then takes `--steps` steps on the same training batches (linear
decay to zero, gradient clipping 1.0, the matmul dtype `auto` picks), and its lens is
kept at the steps in `--at`. Held-out KL(output ‖ lens), mean over the 30 layers, is
measured afterwards on `--eval-tokens` held-out tokens (float32 matmuls), for the start
and each kept lens. Printed: the table at equal steps, each optimiser's seconds per step
(so the table also reads at equal wall time), and the layers where each run ends worse
than the start. Both optimisers run in this one process, one after the other.

    python benchmarks/optimizer_muon.py [--steps 24] [--at 6,12,24] [--lr 1e-3]
    python benchmarks/optimizer_muon.py --steps 48 --at 16,48 --runs adam:1e-3,muon:1e-2
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from hooklens import TunedLens, models
from hooklens.core.precision import describe
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.keep_better import held_out_kl
from hooklens.training.loop import TrainConfig, train_lens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--at", default="6,12,24", help="steps to keep the lens at")
    parser.add_argument("--lr", default="1e-3", help="comma-separated, for both")
    parser.add_argument(
        "--runs", help="comma-separated optimizer:lr pairs instead, e.g. adam:1e-3,muon:1e-2"
    )
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--fit-tokens", type=int, default=12_288)
    parser.add_argument("--eval-tokens", type=int, default=1_024)
    args = parser.parse_args()
    at = sorted({int(step) for step in args.at.split(",")} | {args.steps})
    model = models.load("smollm2-135m")
    texts = load_texts("wikipedia-summaries")["text"]

    def token_batches(held_out: bool, n_tokens: int) -> list[torch.Tensor]:
        chunks = pack(split_texts(texts, held_out=held_out), model.tokenizer, args.seq_len)
        chunks = itertools.islice(chunks, max(1, n_tokens // args.seq_len))
        return list(batches(chunks, args.batch_size))

    per_step = args.seq_len * args.batch_size
    fit = token_batches(False, args.fit_tokens)
    train = token_batches(False, args.fit_tokens + args.steps * per_step)[len(fit) :]
    held_out = token_batches(True, args.eval_tokens)
    with torch.no_grad():
        start = fit_tuned_lens(model, fit)
    start_state = {k: v.detach().clone() for k, v in start.state_dict().items()}
    print(describe("auto"))
    print(f"{args.steps} steps of {per_step} tokens from the fast fit ({args.fit_tokens} tokens)")

    kept: dict[str, dict[str, torch.Tensor]] = {"start": start_state}
    seconds: dict[str, float] = {}
    runs = [(optimizer, float(lr)) for optimizer in ("adam", "muon") for lr in args.lr.split(",")]
    if args.runs:
        runs = [(run.split(":")[0], float(run.split(":")[1])) for run in args.runs.split(",")]
    for optimizer, lr in runs:
        name = f"{optimizer} lr {lr:g}"
        lens = TunedLens.from_model(model)
        lens.load_state_dict(start_state)
        config = TrainConfig(steps=args.steps, lr=lr, optimizer=optimizer, checkpoint_every=10**9)

        def keep(record, name=name, lens=lens) -> None:
            if record["step"] in at:
                kept[f"{name} @ {record['step']}"] = {
                    k: v.detach().clone() for k, v in lens.state_dict().items()
                }

        began = time.perf_counter()
        train_lens(model, lens, train, config, progress=False, on_step=keep)
        seconds[name] = (time.perf_counter() - began) / args.steps
        print(f"{name}: {seconds[name]:.1f} s/step", flush=True)

    results = held_out_kl(model, start, held_out, kept)
    base = results["start"]
    print(f"\nheld-out KL(output ‖ lens), mean over 30 layers, {args.eval_tokens} tokens, nats")
    print(f"fast fit (step 0): {sum(base) / len(base):.4f}")
    print("optimiser | s/step | " + " | ".join(f"step {step}" for step in at))
    for optimizer, lr in runs:
        name = f"{optimizer} lr {lr:g}"
        cells = []
        for step in at:
            per_layer = results[f"{name} @ {step}"]
            cells.append(f"{sum(per_layer) / len(per_layer):.4f}")
        print(f"{name} | {seconds[name]:.1f} | " + " | ".join(cells))
    for optimizer, lr in runs:
        name = f"{optimizer} lr {lr:g}"
        final = results[f"{name} @ {args.steps}"]
        worse = [layer for layer, (a, b) in enumerate(zip(base, final, strict=True)) if b > a]
        print(f"{name}: layers worse than the fast fit at the end: {worse or 'none'}")


if __name__ == "__main__":
    main()
