"""Cheaper Jacobian-lens estimators beside the exact fit, on SmolLM2-135M (issue 15).

Every estimator fits the same training prompts of the offline corpus (cut to
`--seq-len` tokens, all source layers) and is read on the same held-out tokens with
`evaluate_lenses`; its per-layer KL(output ‖ lens) and top-1 agreement are compared with
the exact fit's (relative difference per layer, over the rows that read a fitted J).

- `exact`: `prompt_jacobians` on every prompt (the reference).
- `exact/4`: the exact estimator on the first quarter of the prompts (the honest
  baseline: 4× less compute by construction).
- `random`: `--probes` seeded random orthonormal cotangents per prompt scaled by d/k
  (unbiased), the running mean of the previous prompts' estimates (the identity for the
  first) as control variate C; `projection`: the same draw unscaled (biased toward C).
- `subspace`: the `--probes` directions of the final residual the unembedding reads
  most, every prompt; the identity (the logit lens) elsewhere (biased).
- `stratified keep=m`: those top m directions every prompt, `--probes` − m of the rest
  sampled with inverse-inclusion weights (unbiased), C as for `random`; `cyclic keep=m
  C=I`: the rest walked in one random order, prior the identity.

Compute is counted in passes of the `dim_batch`-replicated prompt (a backward ≈ 2
forwards): 1 + 2·ceil(d_model/dim_batch) per prompt for the exact estimator, 1 +
2·ceil(probes/dim_batch) for a sketch; wall time is measured on the prompts whose
sketches run for real (`--real-prompts`, default all), interleaved with the exact fit.
A sketch measures `Qᵀ J_p` exactly (tests/training/test_jacobian_sketch.py), so on the other
prompts, and for `--seeds` > 1, it is computed from the exact per-prompt Jacobians: the
same estimate without its backward passes. `--exact-cache DIR` keeps the exact
per-prompt Jacobians and their seconds, so a second run costs only the sketches.

    python benchmarks/jlens_estimators.py [--prompts 8] [--seq-len 64] [--probes 128]
    python benchmarks/jlens_estimators.py --prompts 2 --seq-len 48      # a few minutes

Measured (4 prompts × 48 tokens, 2 × 256 held-out tokens, k = 128, on 2 shared cores,
`--exact-cache` filled beforehand, `--real-prompts 0`): FAIL: no estimator within 5%;
mean |ΔKL| over layers: exact/4 24.6%, projection 32.9%, cyclic keep=32 39.0%, subspace
46.8%, random 134.7%, stratified keep=64 140.4% (hooklens/training/jacobian_sketch.py).
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hooklens import JacobianLens, LogitLens, models
from hooklens.evaluation import evaluate_lenses
from hooklens.lenses.jacobian_estimator import prompt_jacobians, prompt_tokens
from hooklens.training.data import batches, load_texts, pack, split_texts
from hooklens.training.jacobian_sketch import (
    output_basis,
    projected_prompt_jacobians,
    random_directions,
    sketch_directions,
    sketch_update,
)

Jacobians = dict[int, Tensor]
# (prompt index, the sketch's generator) -> (Q [d, k], w [k])
Plan = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
TOLERANCE, MIN_COMPUTE_RATIO = 0.05, 4.0
METRICS = {"kl_to_output": "KL", "top1_agreement": "top1"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--probes", type=int, default=128, help="cotangent directions (k)")
    parser.add_argument(
        "--keep", type=int, nargs="*", default=[64], help="stratified: fixed directions"
    )
    parser.add_argument(
        "--cyclic-keep", type=int, nargs="*", default=[32], help="cyclic: fixed directions"
    )
    parser.add_argument("--skip-first", type=int, default=16)
    parser.add_argument("--dim-batch", type=int, default=8)
    parser.add_argument("--eval-seqs", type=int, default=2, help="held-out sequences")
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the random sketches")
    parser.add_argument("--real-prompts", type=int, help="prompts whose sketches run for real")
    parser.add_argument(
        "--real", nargs="+", default=[""], help="run for real only the sketches named so"
    )
    parser.add_argument("--exact-cache", type=Path, help="keep and reuse the exact J_p here")
    return parser.parse_args()


def mean_of(jacobians: Sequence[Jacobians]) -> Jacobians:
    return {layer: torch.stack([j[layer] for j in jacobians]).mean(dim=0) for layer in jacobians[0]}


def passes(n_directions: int, dim_batch: int) -> int:
    """Replicated-prompt passes of one prompt: a forward, ceil(k/b) backwards ≈ 2 each."""
    return 1 + 2 * math.ceil(n_directions / dim_batch)


@dataclass
class Sketch:
    """A sketch estimator fitted prompt by prompt; C = the mean of the previous estimates
    (`running`), or the identity."""

    plan: Plan
    n_directions: int
    seed: int
    running: bool = True
    estimates: list[Jacobians] = field(default_factory=list)
    seconds: float = 0.0
    timed_prompts: int = 0

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def control(self, layers: Sequence[int], d_model: int) -> Jacobians:
        if not self.running or not self.estimates:
            return {layer: torch.eye(d_model) for layer in layers}
        return mean_of(self.estimates)

    def add(
        self,
        measure: Callable[[Tensor], Jacobians],
        layers: list[int],
        d_model: int,
        *,
        timed: bool,
    ) -> None:
        """One prompt; `measure(Q)` is `{layer: Qᵀ J_p}`, from backward passes or from J_p."""
        began = time.perf_counter()
        directions, weights = self.plan(len(self.estimates), self.generator)
        measured, prior = measure(directions), self.control(layers, d_model)
        estimate = {
            layer: sketch_update(measured[layer], directions, weights, prior[layer])
            for layer in layers
        }
        self.estimates.append(estimate)
        if timed:
            self.seconds += time.perf_counter() - began
            self.timed_prompts += 1


def sketches(args: argparse.Namespace, d_model: int, basis: Tensor) -> dict[str, Sketch]:
    k = args.probes

    def random_plan(scale: float) -> Plan:
        return lambda i, g: (random_directions(d_model, k, g), torch.full((k,), scale))

    def planned(keep: int) -> Plan:
        return lambda i, g: sketch_directions(d_model, k, keep=keep, basis=basis, generator=g)

    def cyclic(keep: int, seed: int) -> Plan:
        def plan(index: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            order = torch.Generator().manual_seed(seed)  # the same order for every prompt
            return sketch_directions(
                d_model, k, keep=keep, basis=basis, generator=order, prompt_index=index
            )

        return plan

    found: dict[str, Sketch] = {}
    for seed in range(args.seeds):
        found[f"random s{seed}"] = Sketch(random_plan(d_model / k), k, seed)
        found[f"projection s{seed}"] = Sketch(random_plan(1.0), k, seed)
        for keep in args.keep:
            found[f"stratified keep={keep} s{seed}"] = Sketch(planned(keep), k, seed)
        for keep in args.cyclic_keep:
            name = f"cyclic keep={keep} C=I s{seed}"
            found[name] = Sketch(cyclic(keep, seed), k, seed, running=False)
    found["subspace"] = Sketch(planned(k), k, 0, running=False)
    return found


def exact_per_prompt(
    model: Any, tokens: Tensor, layers: list[int], args: argparse.Namespace, index: int
) -> tuple[Jacobians, float]:
    """The exact `J_p` and its seconds, from `--exact-cache` when it holds this prompt."""
    cached = args.exact_cache / f"prompt_{index}.pt" if args.exact_cache else None
    settings = [args.skip_first, args.dim_batch, layers]
    if cached is not None and cached.is_file():
        state = torch.load(cached, weights_only=True)
        if torch.equal(state["tokens"], tokens) and state["settings"] == settings:
            return state["J"], float(state["seconds"])
    began = time.perf_counter()
    jacobians = prompt_jacobians(
        model, tokens, layers, dim_batch=args.dim_batch, skip_first_positions=args.skip_first
    )
    seconds = time.perf_counter() - began
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        state = {"J": jacobians, "seconds": seconds, "tokens": tokens, "settings": settings}
        torch.save(state, cached)
    return jacobians, seconds


def training_prompts(model: Any, args: argparse.Namespace) -> list[Tensor]:
    texts = split_texts(load_texts("wikipedia-summaries")["text"], held_out=False)
    long_enough = (t for t in texts if len(model.to_tokens(t)[0]) >= args.seq_len)
    chosen = itertools.islice(long_enough, args.prompts)
    return [prompt_tokens(model, text, args.seq_len) for text in chosen]


def held_out_batches(model: Any, args: argparse.Namespace) -> list[Tensor]:
    texts = split_texts(load_texts("wikipedia-summaries")["text"], held_out=True)
    chunks = pack(texts, model.tokenizer, args.eval_seq_len)
    return list(batches(itertools.islice(chunks, args.eval_seqs), 1))


def relative_differences(
    metrics: dict[str, list[float]], exact: dict[str, list[float]]
) -> dict[str, list[float]]:
    rows = range(1, len(exact["kl_to_output"]) - 1)  # row ℓ reads J_{ℓ-1}; the last is I
    return {m: [(metrics[m][i] - exact[m][i]) / exact[m][i] for i in rows] for m in METRICS}


def is_extra_seed(name: str) -> bool:
    return name.rsplit(" ", 1)[-1] in {f"s{seed}" for seed in range(1, 100)}


def main() -> None:
    args = parse_args()
    model: Any = models.load("smollm2-135m", model_class="bridge", processing=False)
    model.requires_grad_(False)
    d_model, n_layers = int(model.cfg.d_model), int(model.cfg.n_layers)
    layers = list(range(n_layers - 1))
    prompts = training_prompts(model, args)
    real_prompts = len(prompts) if args.real_prompts is None else args.real_prompts
    estimators = sketches(args, d_model, output_basis(model))
    settings = dict(dim_batch=args.dim_batch, skip_first_positions=args.skip_first)
    exact: list[Jacobians] = []
    exact_seconds: list[float] = []
    for index, tokens in enumerate(prompts):  # interleaved, so load drifts hit all alike
        jacobians, seconds = exact_per_prompt(model, tokens, layers, args, index)
        exact.append(jacobians)
        exact_seconds.append(seconds)

        def backward_passes(q: Tensor, tokens: Tensor = tokens) -> Jacobians:
            return projected_prompt_jacobians(model, tokens, layers, q, **settings)

        def from_exact(q: Tensor, j: Jacobians = jacobians) -> Jacobians:
            return {layer: q.T @ j[layer] for layer in layers}

        for name, sketch in estimators.items():
            chosen = any(name.startswith(prefix) for prefix in args.real)
            real = index < real_prompts and chosen and not is_extra_seed(name)
            sketch.add(backward_passes if real else from_exact, layers, d_model, timed=real)
        print(f"prompt {index + 1}/{len(prompts)}: exact {seconds:.1f} s", flush=True)
    quarter = max(1, len(prompts) // 4)
    exact_passes = passes(d_model, args.dim_batch)
    fits = {"exact": mean_of(exact), f"exact/4 ({quarter} prompts)": mean_of(exact[:quarter])}
    compute = {"exact": 1.0, f"exact/4 ({quarter} prompts)": len(prompts) / quarter}
    wall = {
        "exact": 1.0,
        f"exact/4 ({quarter} prompts)": sum(exact_seconds) / sum(exact_seconds[:quarter]),
    }
    for name, sketch in estimators.items():
        fits[name] = mean_of(sketch.estimates)
        compute[name] = exact_passes / passes(sketch.n_directions, args.dim_batch)
        n_timed = sketch.timed_prompts
        wall[name] = sum(exact_seconds[:n_timed]) / sketch.seconds if n_timed else math.nan
    report(model, fits, compute, wall, args, held_out_batches(model, args))


def report(model, fits, compute, wall, args, eval_batches) -> None:
    lenses: dict[str, Any] = {"logit lens": LogitLens.from_model(model)}
    lenses |= {name: JacobianLens.from_model(model, j) for name, j in fits.items()}
    began = time.perf_counter()
    results = evaluate_lenses(model, lenses, eval_batches)
    by_lens = results["lenses"]
    exact = by_lens["exact"]
    print(
        f"\nSmolLM2-135M bridge, {args.prompts} prompts × {args.seq_len} tokens, skip "
        f"{args.skip_first}, dim_batch {args.dim_batch}, probes {args.probes}; "
        f"{results['tokens']} held-out tokens (evaluated in {time.perf_counter() - began:.0f} "
        f"s); {torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}"
    )
    header = f"{'estimator':>28} {'compute':>8} {'wall':>6} {'KL':>6} {'top1':>6}"
    for label in METRICS.values():
        header += f" {'|Δ' + label + '| max':>11} {'Δ' + label + ' mean':>11}"
    print(header + "  verdict")
    verdicts = {}
    for name, metrics in by_lens.items():
        rows = range(1, len(exact["kl_to_output"]) - 1)
        kl = sum(metrics["kl_to_output"][i] for i in rows) / len(rows)
        top1 = sum(metrics["top1_agreement"][i] for i in rows) / len(rows)
        line = (
            f"{name:>28} {compute[name]:7.2f}× {wall[name]:5.2f}× {kl:6.3f} {top1:6.3f}"
            if name in compute
            else f"{name:>28} {'':>8} {'':>6} {kl:6.3f} {top1:6.3f}"
        )
        if name in ("logit lens", "exact"):
            print(line)
            continue
        diff = relative_differences(metrics, exact)
        for metric in METRICS:
            values = diff[metric]
            line += f" {max(map(abs, values)):11.1%} {sum(values) / len(values):+11.1%}"
        worst = max(abs(v) for values in diff.values() for v in values)
        verdicts[name] = compute[name] >= MIN_COMPUTE_RATIO and worst <= TOLERANCE
        print(line + ("  PASS" if verdicts[name] else "  FAIL"))
    print(
        "\nper layer (row ℓ reads J_{ℓ-1}): KL and top-1 agreement of the exact fit and the "
        "logit lens, then the relative ΔKL / Δtop1 of each estimator (KL and top1 above are "
        "means over these rows)"
    )
    names = [n for n in by_lens if n not in ("logit lens", "exact") and not is_extra_seed(n)]
    labels = " ".join(f"{n.replace('stratified', 'strat')[:15]:>15}" for n in names)
    print(f"{'row':>4} {'KL':>6} {'logit':>6} {'top1':>5} {'logit':>5} " + labels)
    diffs = {n: relative_differences(by_lens[n], exact) for n in names}
    for i, row in enumerate(range(1, len(exact["kl_to_output"]) - 1)):
        cells = " ".join(
            f"{diffs[n]['kl_to_output'][i]:>+7.1%}/{diffs[n]['top1_agreement'][i]:>+6.1%}"
            for n in names
        )
        logit = by_lens["logit lens"]
        kls = f"{exact['kl_to_output'][row]:6.3f} {logit['kl_to_output'][row]:6.3f}"
        tops = f"{exact['top1_agreement'][row]:5.3f} {logit['top1_agreement'][row]:5.3f}"
        print(f"{row:>4} {kls} {tops} {cells}")
    passed = [name for name, ok in verdicts.items() if ok]
    print(
        f"\n{'PASS' if passed else 'FAIL'}: {', '.join(passed) if passed else 'no estimator'} "
        f"within {TOLERANCE:.0%} of the exact fit's KL and top-1 agreement at every layer with "
        f"≥ {MIN_COMPUTE_RATIO:.0f}× less compute"
    )


if __name__ == "__main__":
    main()
