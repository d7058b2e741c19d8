"""PredictionTrajectory on the embedded SmolLM2-135M: time and peak memory, side by side.

Cases, each in a fresh subprocess with the model and the `run_with_cache` residuals in
memory before measuring, and each run twice: once for time, in the ordinary
environment, and once for memory, with large blocks served by mmap so that freed memory
leaves the RSS at once ("peak MiB" is the peak RSS above the set-up, the peak reset just
before the work; mmap makes that run's times meaningless, so they are not shown):

- bound: the bare unembedding matmuls, `[pos, 576] @ [576, 49152]` float32 × 31 rows,
  the floor for any exact all-layer readout;
- ours: `PredictionTrajectory.from_lens_and_cache` (every single-trajectory statistic
  plus top-k labels in one pass), then `total_variation` against a second trajectory;
- reference: tuned-lens 0.2's `PredictionTrajectory.from_lens_and_cache` (materialises
  `[31, pos, 49152]` float32 log-probs) and its `entropy()`, if `make bench` installed it
  into `.venv/reference`; otherwise the same materialising approach written out here;
- tuned lens and J-lens (at the `--lens-cases` positions): the same build with a tuned
  lens and with a Jacobian lens on the raw-weight model (J-lenses refuse processed
  weights), each translating every layer with a random matrix near the identity (a
  d_model × d_model matmul per row: what reading costs, whatever the lens was fitted
  to). Both should stay within the logit lens's peak: a trajectory transforms one row
  block of one layer at a time, whatever the lens.

    python benchmarks/trajectory_memory.py [--positions 512 1024 4096] [--reference 512]
        [--comparison 512 1024] [--lens-cases 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from hooklens import Lens

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = ROOT / ".venv" / "reference"
LENS_CASES = {"tuned": "tuned lens", "jacobian": "J-lens"}  # case: label


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


class Measure:
    """Time and peak RSS above the current RSS of a block of work."""

    def __enter__(self) -> Measure:
        _reset_peak()
        self.before = _rss_mib("VmRSS")
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        self.peak_mib = _rss_mib("VmHWM") - self.before


def _setup(positions: int, processing: bool | None = None):
    import torch

    from hooklens import LogitLens, ModelAdapter, models

    torch.set_grad_enabled(False)
    # Any: nn.Module's types do not know TransformerLens's to_tokens and run_with_cache.
    model: Any = models.load("smollm2-135m", processing=processing)
    paragraph = (
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. "
        "It is named after the engineer Gustave Eiffel, whose company designed and built "
        "the tower from 1887 to 1889 as the centrepiece of the World's Fair. "
    )
    tokens = model.to_tokens(paragraph * (positions // 40 + 1))[:, :positions]
    names = set(ModelAdapter(model).residual_hook_names())
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return model, tokens, logits, cache, LogitLens.from_model(model)


def _near_identity(d_model: int, seed: int) -> Tensor:
    """`I + N(0, 0.02²)`: a matrix like a fitted J_ℓ or tuned translator, cheap to make."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.eye(d_model) + 0.02 * torch.randn(d_model, d_model, generator=generator)


def _translating_lens(case: str, model) -> Lens:
    """A tuned lens or J-lens whose every layer is a random near-identity matrix."""
    import torch

    from hooklens import JacobianLens, ModelAdapter, TunedLens

    adapter = ModelAdapter(model)
    d_model, n_layers = adapter.d_model, adapter.n_layers
    if case == "jacobian":
        # Source layers 0..n_layers-2: with resid_pre rows, rows 1..n_layers-1 read them.
        jacobians = {layer: _near_identity(d_model, layer) for layer in range(n_layers - 1)}
        return JacobianLens.from_model(model, jacobians)
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for layer in range(n_layers):
            lens[layer].weight.copy_(_near_identity(d_model, layer) - torch.eye(d_model))
    return lens


def run_case(case: str, positions: int, with_comparison: bool) -> dict:
    import torch

    raw = case in LENS_CASES  # a J-lens reads raw activations; the tuned lens beside it too
    model, tokens, logits, cache, lens = _setup(positions, processing=False if raw else None)
    result: dict = {}
    if case == "bound":
        w_u = lens.unembed.W_U
        hidden = torch.randn(positions, w_u.shape[0])
        hidden @ w_u  # warm-up
        with Measure() as m:
            for _ in range(lens.n_layers + 1):
                hidden @ w_u
        result["build"] = (m.seconds, m.peak_mib)
    elif case == "ours":
        from hooklens import TunedLens
        from hooklens.trajectory import PredictionTrajectory, next_token_targets

        targets = next_token_targets(tokens)
        with Measure() as m:
            traj = PredictionTrajectory.from_lens_and_cache(
                lens, tokens, cache, logits, targets=targets
            )
        result["build"] = (m.seconds, m.peak_mib)
        with Measure() as m:
            traj.entropy(), traj.forward_kl(), traj.cross_entropy(), traj.rank()
        result["entropy etc."] = (m.seconds, m.peak_mib)
        if with_comparison:
            other = PredictionTrajectory.from_lens_and_cache(
                TunedLens.from_model(model), tokens, cache, logits
            )
            with Measure() as m:
                traj.total_variation(other)
            result["total_variation"] = (m.seconds, m.peak_mib)
    elif case in LENS_CASES:
        from hooklens.trajectory import PredictionTrajectory, next_token_targets

        lens = _translating_lens(case, model)
        targets = next_token_targets(tokens)
        with Measure() as m:
            PredictionTrajectory.from_lens_and_cache(lens, tokens, cache, logits, targets=targets)
        result["build"] = (m.seconds, m.peak_mib)
    elif case == "reference":
        if (REFERENCE_DIR / "tuned_lens").is_dir():
            sys.path.insert(0, str(REFERENCE_DIR))
            from tuned_lens.plotting import PredictionTrajectory as Reference

            result["implementation"] = "tuned-lens 0.2.0"
            with Measure() as m:
                traj = Reference.from_lens_and_cache(lens, tokens, cache, logits)
            result["build"] = (m.seconds, m.peak_mib)
            with Measure() as m:
                traj.entropy()
            result["entropy etc."] = (m.seconds, m.peak_mib)
        else:
            result["implementation"] = "materialising re-implementation"
            with Measure() as m:
                rows = [lens(cache[f"blocks.{i}.hook_resid_pre"], i) for i in range(30)]
                log_probs = torch.log_softmax(torch.stack([*rows, logits]), -1).numpy()
            result["build"] = (m.seconds, m.peak_mib)
            with Measure() as m:
                -(torch.from_numpy(log_probs).exp() * torch.from_numpy(log_probs)).sum(-1)
            result["entropy etc."] = (m.seconds, m.peak_mib)
    return result


def _subprocess(case: str, positions: int, mode: str, with_comparison: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if mode == "memory":
        env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    command = [sys.executable, __file__, "--case", case, "--positions", str(positions)]
    if with_comparison:
        command.append("--with-comparison")
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": f"exit {out.returncode}: {tail[:120]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measured(case: str, positions: int, with_comparison: bool) -> dict:
    """`{step: (seconds from the time run, peak MiB from the memory run)}`."""
    timed = _subprocess(case, positions, "time", with_comparison)
    if "error" in timed:
        return timed
    sized = _subprocess(case, positions, "memory", with_comparison)
    result = {"implementation": timed.pop("implementation", None)}
    for step, (seconds, _) in timed.items():
        peak = sized.get(step, (None, float("nan")))[1] if "error" not in sized else float("nan")
        result[step] = (seconds, peak)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, nargs="+", default=[512, 1024, 4096])
    parser.add_argument(
        "--reference", type=int, nargs="*", default=[512], help="positions to run it at"
    )
    parser.add_argument(
        "--comparison", type=int, nargs="*", default=[512, 1024], help="positions for TV"
    )
    parser.add_argument(
        "--lens-cases",
        type=int,
        nargs="*",
        default=[1024],
        help="positions for the tuned lens and J-lens builds",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--with-comparison", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.positions[0], args.with_comparison)))
        return

    print("SmolLM2-135M, 31 rows × 49,152 vocab, float32, 2 threads; peak = RSS above set-up")
    print(f"{'positions':>9}  {'case':<34}{'seconds':>9}{'peak MiB':>10}{'× bound':>9}")
    for positions in args.positions:
        bound = _subprocess("bound", positions, "time", False)
        bound_s = bound["build"][0]
        rows = [("bound: bare W_U matmuls", (bound_s, float("nan")))]
        ours = _measured("ours", positions, positions in args.comparison)
        ours.pop("implementation", None)
        rows += [(f"ours: {key}", value) for key, value in ours.items() if key != "error"]
        reference = _measured("reference", positions, False) if positions in args.reference else {}
        name = reference.pop("implementation", None) or "reference"
        if "error" in reference:
            print(f"{positions:>9}  {name}: {reference.pop('error')}")
        rows += [(f"{name}: {key}", value) for key, value in reference.items()]
        lens_builds = {}
        if positions in args.lens_cases:
            for case, label in LENS_CASES.items():
                measured = _measured(case, positions, False)
                if "error" in measured:
                    print(f"{positions:>9}  {label}: {measured['error']}")
                    continue
                lens_builds[label] = measured["build"]
                rows.append((f"{label}: build", measured["build"]))
        for label, (seconds, peak) in rows:
            print(
                f"{positions:>9}  {label:<34}{seconds:>9.1f}{peak:>10.0f}{seconds / bound_s:>9.2f}"
            )
        if "build" in reference and "build" in ours:
            ref_total = reference["build"][0] + reference["entropy etc."][0]
            our_total = ours["build"][0] + ours["entropy etc."][0]
            ref_peak = max(reference["build"][1], reference["entropy etc."][1])
            our_peak = max(ours["build"][1], ours["entropy etc."][1])
            print(
                f"{'':>9}  reference / ours: time {ref_total / our_total:.1f}×, "
                f"peak memory {ref_peak / max(our_peak, 1):.0f}×"
            )
        if len(lens_builds) == len(LENS_CASES) and "build" in ours:
            (tuned_s, tuned_peak), (jlens_s, jlens_peak) = lens_builds.values()
            print(
                f"{'':>9}  J-lens / tuned lens: time {jlens_s / tuned_s:.2f}×, peak memory "
                f"{jlens_peak / max(tuned_peak, 1):.2f}×; J-lens peak / logit-lens peak "
                f"{jlens_peak / max(ours['build'][1], 1):.2f}×"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
