"""Peak memory of reading every layer through the unembedding: chunked vs materialised.

Each case runs in a fresh subprocess and reports its peak RSS (VmHWM, reset just
before the work) above the RSS of the set-up (the unembedding and the residual stack
already in memory), so cases cannot disturb each other. Large blocks are served by
mmap in those subprocesses so that freed memory leaves the RSS at once; that makes
their timings include page faults. The reduction computed is the per-(layer, position)
log-sum-exp over the vocabulary, the normaliser every lens statistic needs.

    python benchmarks/unembed_memory.py [--pos 512] [--layers 31]

Shapes default to SmolLM2-135M (d_model 576, vocab 49,152, 30 blocks + output row);
weights are random, since memory and time do not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

D_MODEL, D_VOCAB = 576, 49_152


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_case(mode: str, chunk: int, layers: int, pos: int) -> dict:
    import torch

    from hooklens.core.unembed import Unembed

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    unembed = Unembed(
        torch.nn.LayerNorm(D_MODEL), torch.randn(D_MODEL, D_VOCAB) / D_MODEL**0.5, chunk_size=chunk
    )
    residuals = torch.randn(layers, pos, D_MODEL)
    unembed.logsumexp(residuals[0, :2])  # warm up kernels and allocator
    _reset_peak_rss()
    before = _rss_mib("VmRSS")
    start = time.perf_counter()
    if mode == "materialised":
        # What the reference does: every layer's log-probs at once, then reduce.
        log_probs = torch.stack([unembed.log_probs(h) for h in residuals])
        result = torch.logsumexp(log_probs, dim=-1)
    else:
        result = torch.stack([unembed.logsumexp(h) for h in residuals])
    seconds = time.perf_counter() - start
    assert result.shape == (layers, pos)
    return {"peak_extra_mib": _rss_mib("VmHWM") - before, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pos", type=int, default=512)
    parser.add_argument("--layers", type=int, default=31)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case
    args = parser.parse_args()
    if args.case:
        mode, chunk, layers = args.case.split(":")
        print(json.dumps(run_case(mode, int(chunk), int(layers), args.pos)))
        return

    cases = [
        ("materialised", D_VOCAB, args.layers),
        ("chunked", 16_384, args.layers),
        ("chunked", 4_096, args.layers),
        ("chunked", 1_024, args.layers),
        ("chunked", 4_096, 1),
    ]
    one_chunk_mib = lambda chunk: args.pos * chunk * 4 / 2**20  # noqa: E731
    print(f"d_model={D_MODEL} vocab={D_VOCAB} pos={args.pos}; peak RSS above set-up per case\n")
    print(f"{'mode':<13}{'chunk':>7}{'layers':>7}{'peak MiB':>10}{'1 chunk MiB':>13}{'s':>7}")
    results = {}
    for mode, chunk, layers in cases:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--pos",
                str(args.pos),
                "--case",
                f"{mode}:{chunk}:{layers}",
            ],
            check=True,
            capture_output=True,
            text=True,
            # Serve every big block by mmap so freed memory leaves the RSS at once.
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        results[(mode, chunk, layers)] = result
        print(
            f"{mode:<13}{chunk:>7}{layers:>7}{result['peak_extra_mib']:>10.0f}"
            f"{one_chunk_mib(chunk):>13.0f}{result['seconds']:>7.1f}"
        )
    materialised = results[("materialised", D_VOCAB, args.layers)]
    chunked = results[("chunked", 4_096, args.layers)]
    single = results[("chunked", 4_096, 1)]
    print(
        f"\nmaterialised / chunked(4096) peak memory: "
        f"{materialised['peak_extra_mib'] / max(chunked['peak_extra_mib'], 1):.1f}x"
        f"\nchunked(4096): {args.layers} layers / 1 layer peak memory: "
        f"{chunked['peak_extra_mib'] / max(single['peak_extra_mib'], 1):.2f}x"
        f"\nmaterialised / chunked(4096) time: "
        f"{materialised['seconds'] / chunked['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
