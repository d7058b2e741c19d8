"""Tuned-lens training throughput and memory on SmolLM2-135M, side by side in one run.

- reference loop: what tuned-lens 0.2.0's trainer does per batch: per layer, the
  full-vocabulary logits, `log_softmax`, KL and a backward (all `[tokens, vocab]`
  tensors of a layer alive at once), in float32 and under bf16 autocast as tuned-lens
  runs it;
- ours, float32 / bfloat16 matmuls: `hooklens.training.loop.batch_loss` (the model's
  output distribution once per batch, chunked KL with the gradient computed in the same
  pass over the vocabulary, nothing `[tokens, vocab]` per layer);
- ours, sampled KL (opt-in, `--kl-samples`): each row's 32 top target tokens exactly
  and `--kl-samples` tokens drawn per batch (`hooklens.core.sampled_kl`), in the
  precision "ours" runs in; "× speed" is against ours, exact, in the same precision.

float32 ours vs float32 reference is the comparison that holds on every CPU. The bf16
rows run only where `hooklens.precision` measures bf16 as natively fast: where it is
emulated (AVX2-only CPUs, ~100× slower than float32) a bf16 step would take tens of
minutes and say nothing about either implementation. "× speed" is against the
reference in the same precision.

Every variant runs in its own subprocess (so peak memory is its own) on the same
`[batch, seq]` batch of Wikipedia text: one warm-up step, then `--steps` timed Adam
steps. The reference loop runs with glibc's default allocator settings, as tuned-lens
does, and again with hooklens's (`retain_freed_memory`), which speeds it up too.
Tokens/s counts the batch's tokens (every layer is trained on each). "Peak
above model" is the process's peak RSS minus its RSS after loading the model and
running one no-grad forward on the batch.

    python benchmarks/train_throughput.py [--batch 4] [--seq 512] [--steps 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time

import torch


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def reference_step(model, lens, tokens, autocast: bool) -> None:
    adapter = lens.adapter
    names = set(adapter.residual_hook_names())
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        labels = logits.float().log_softmax(-1)
    for layer in range(lens.n_layers):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            log_p = lens(cache[adapter.hook_name("resid_pre", layer)], layer).log_softmax(-1)
            loss = torch.sum(labels.exp() * (labels - log_p), dim=-1).mean()
        loss.backward()


def child(variant: str, batch: int, seq: int, steps: int, kl_samples: int) -> None:
    from hooklens import TunedLens, models
    from hooklens.core.precision import retain_freed_memory
    from hooklens.training.data import batches, load_texts, pack, split_texts
    from hooklens.training.loop import TrainConfig, batch_loss

    if variant.endswith("-retain") or not variant.startswith("reference"):
        # the reference as tuned-lens runs it keeps glibc's defaults
        retain_freed_memory()  # hooklens/core/precision.py (train_lens sets it too)
    model = models.load("smollm2-135m")
    model.requires_grad_(False)
    texts = load_texts("wikipedia-summaries")["text"]
    chunks = pack(split_texts(texts, held_out=False), model.tokenizer, seq)
    tokens = next(batches(itertools.islice(chunks, batch), batch))
    with torch.no_grad():
        model(tokens)
    baseline = _rss_mib()
    lens = TunedLens.from_model(model)
    if variant.startswith("reference"):
        autocast = "bf16" in variant
        step = lambda: reference_step(model, lens, tokens, autocast)  # noqa: E731
    else:
        dtype, _, sampled = variant.partition("-")
        config = TrainConfig(matmul_dtype=dtype, kl_samples=kl_samples if sampled else 0)
        step = lambda: batch_loss(model, lens, tokens, config)[0].backward()  # noqa: E731
    optimizer = torch.optim.Adam(lens.parameters(), lr=1e-3)
    timings = []
    for _ in range(steps + 1):  # the first is a warm-up
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step()
        optimizer.step()
        timings.append(time.perf_counter() - began)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = sum(timings[1:]) / steps
    print(json.dumps({"seconds": seconds, "peak": peak, "above": peak - baseline}))


# name: (variant, the reference it is compared with)
FLOAT32 = {
    "reference loop, float32": ("reference-fp32", "reference loop, float32"),
    "reference + our allocator, float32": (
        "reference-fp32-retain",
        "reference loop, float32",
    ),
    "ours, float32 matmuls": ("float32", "reference loop, float32"),
    "ours, float32, sampled KL": ("float32-sampled", "ours, float32 matmuls"),
}
BFLOAT16 = {
    "reference loop, bf16 autocast": ("reference-bf16", "reference loop, bf16 autocast"),
    "reference + our allocator, bf16": (
        "reference-bf16-retain",
        "reference loop, bf16 autocast",
    ),
    "ours, bfloat16 matmuls": ("bfloat16", "reference loop, bf16 autocast"),
    "ours, bfloat16, sampled KL": ("bfloat16-sampled", "ours, bfloat16 matmuls"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--kl-samples", type=int, default=1024)
    parser.add_argument(
        "--only", help="comma-separated variants to run, e.g. float32,float32-sampled"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.batch, args.seq, args.steps, args.kl_samples)
    from hooklens import precision

    variants = dict(FLOAT32)
    bf16_native = precision.matmul_dtype("auto") == torch.bfloat16
    if bf16_native:
        variants |= BFLOAT16
    if args.only:  # the variants asked for and those they are compared with
        wanted = {name for name, (v, _) in variants.items() if v in args.only.split(",")}
        needed = wanted | {variants[name][1] for name in wanted}
        variants = {name: v for name, v in variants.items() if name in needed}
    results = {}
    for name, (variant, _) in variants.items():
        command = [sys.executable, __file__, "--child", variant, *sys.argv[1:]]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    n_tokens = args.batch * args.seq
    print(f"SmolLM2-135M, {n_tokens} tokens per step ({args.batch} × {args.seq}), 30 layers")
    print(precision.describe() + ("" if bf16_native else ": bf16 rows skipped"))
    print(
        f"{'implementation':<36}{'s/step':>8}{'tokens/s':>10}{'× speed':>9}"
        f"{'peak MiB':>10}{'above model':>13}{'÷ memory':>10}"
    )
    for name, r in results.items():
        base = results.get(variants[name][1])  # absent when --only left it out
        speed = f"{base['seconds'] / r['seconds']:>9.2f}" if base else f"{'–':>9}"
        memory = f"{base['above'] / max(r['above'], 1):>10.1f}" if base else f"{'–':>10}"
        print(
            f"{name:<36}{r['seconds']:>8.1f}{n_tokens / r['seconds']:>10.0f}"
            f"{speed}{r['peak']:>10.0f}{r['above']:>13.0f}{memory}"
        )


if __name__ == "__main__":
    main()
