"""The training loss in float32, bfloat16 and float16 matmuls against float64, on SmolLM2.

`auto` takes float16 for the loss's vocabulary matmuls on GPUs with float16 tensor
cores and no bf16 (Colab's T4, V100) only because float16 is at least as accurate as
bf16, which `auto` already takes where it is native. This measures that on the real
unembedding (49,152 tokens, d_model 576): the logit-lens readout of every
`--stride`-th layer's residual on `--tokens` tokens of Wikipedia summaries, against
the model's own output. For each matmul dtype it prints the relative error of the
chunked KL (`hooklens.core.chunked_kl.ChunkedKL`) and of its gradient against float64
autograd through the full softmax. The CPU runs float16 matmuls with float32
accumulation and float16 outputs, as tensor cores do; it is a statement about
rounding, not speed.

    python benchmarks/matmul_dtype_accuracy.py [--tokens 256] [--stride 6]
"""

from __future__ import annotations

import argparse

import torch

from hooklens import Unembed, models
from hooklens.core import ModelAdapter
from hooklens.core.chunked_kl import (
    ChunkedKL,
    target_distribution,
    target_projection,
    weight_chunks,
)
from hooklens.training.data import load_texts, pack, split_texts

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def errors(unembed: Unembed, hidden: torch.Tensor, logits: torch.Tensor, dtype) -> tuple:
    """(relative error of the loss, of its gradient) in `dtype` against float64."""
    with torch.no_grad():
        normed = unembed.final_norm(hidden).float()
    q = torch.softmax(logits.double(), -1)
    exact = normed.double().requires_grad_(True)
    log_p = torch.log_softmax(exact @ unembed.W_U.double(), -1)
    expected = (q * (q.log() - log_p)).sum(-1).mean()
    (expected_grad,) = torch.autograd.grad(expected, exact)
    chunks = weight_chunks(unembed.W_U, 8192, dtype)
    target, neg_entropy = target_distribution(logits.float().clone())
    projection = target_projection(unembed, target, w_chunks=chunks)
    x = normed.clone().requires_grad_(True)
    loss = ChunkedKL.apply(x, target, neg_entropy, projection, chunks, None, None)
    (grad,) = torch.autograd.grad(loss, x)
    return (
        abs(loss.double() - expected).item() / expected.item(),
        ((grad.double() - expected_grad).norm() / expected_grad.norm()).item(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--stride", type=int, default=6)
    args = parser.parse_args()

    model = models.load("smollm2-135m")
    adapter, unembed = ModelAdapter(model), Unembed.from_model(model)
    texts = (row["text"] for row in load_texts("wikipedia-summaries", streaming=True))
    tokens = next(iter(pack(split_texts(texts, held_out=True), model.tokenizer, args.tokens)))
    names = adapter.residual_hook_names()
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[None], names_filter=names)
    logits = logits[0].float()
    print(f"{args.tokens} tokens, SmolLM2-135M, logit lens against the model's output")
    print("layer | KL (nats) | " + " | ".join(f"{str(d)[6:]} loss, grad" for d in DTYPES))
    worst = {dtype: [0.0, 0.0] for dtype in DTYPES}
    for layer in range(0, adapter.n_layers, args.stride):
        hidden = cache[adapter.hook_name("resid_pre", layer)][0].float()
        row = []
        for dtype in DTYPES:
            loss_error, grad_error = errors(unembed, hidden, logits, dtype)
            worst[dtype] = [max(worst[dtype][0], loss_error), max(worst[dtype][1], grad_error)]
            row.append(f"{loss_error:.1e}, {grad_error:.1e}")
        with torch.no_grad():
            log_p = torch.log_softmax(unembed(hidden).double(), -1)
            q = torch.log_softmax(logits.double(), -1)
            kl = (q.exp() * (q - log_p)).sum(-1).mean().item()
        print(f"{layer:5d} | {kl:9.3f} | " + " | ".join(row))
    print("worst | " + " | ".join(f"{w[0]:.1e}, {w[1]:.1e}" for w in worst.values()))
    ratio = worst[torch.bfloat16][1] / worst[torch.float16][1]
    print(f"float16's worst gradient error is {ratio:.1f}× smaller than bfloat16's")


if __name__ == "__main__":
    main()
