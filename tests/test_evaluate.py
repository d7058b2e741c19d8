"""Per-layer evaluation numbers are the trajectory's, averaged the right way."""

from __future__ import annotations

import math

import numpy as np
import torch

from hooklens import LogitLens, TunedLens
from hooklens.training.evaluate import evaluate_lenses, figure, layer_transfer, transfer_figure
from tests.conftest import N_LAYERS


def test_evaluation_reports_every_layer_for_every_lens(model_zoo):
    model = model_zoo["bridge-llama"]
    generator = torch.Generator().manual_seed(0)
    token_batches = [torch.randint(4, 10, (2, 6), generator=generator) for _ in range(2)]
    tuned = TunedLens.from_model(model)
    with torch.no_grad():
        for param in tuned.parameters():
            param.normal_(0, 0.1, generator=generator)
    results = evaluate_lenses(
        model, {"logit": LogitLens.from_model(model), "tuned": tuned}, token_batches
    )
    assert results["tokens"] == 24
    for name in ("logit", "tuned"):
        metrics = results["lenses"][name]
        assert all(len(metrics[m]) == N_LAYERS + 1 for m in metrics)
        assert abs(metrics["kl_to_output"][-1]) < 1e-5  # the output row is the model
        assert metrics["top1_agreement"][-1] == 1.0
        assert all(0 <= v <= 1 for v in metrics["top1_agreement"])
        ratio = np.array(metrics["cross_entropy_bits_per_byte"]) / np.array(
            metrics["cross_entropy"]
        )
        assert np.allclose(ratio, 20 / math.log(2) / results["bytes"], rtol=1e-4)  # 20 targets
    assert (
        results["lenses"]["tuned"]["kl_to_output"][0]
        != results["lenses"]["logit"]["kl_to_output"][0]
    )
    assert len(figure(results).data) == 2


def test_layer_transfer_diagonal_is_the_lens_and_columns_are_residuals(model_zoo):
    model = model_zoo["hooked-rms-processed"]
    generator = torch.Generator().manual_seed(1)
    token_batches = [torch.randint(4, 10, (2, 6), generator=generator) for _ in range(2)]
    tuned = TunedLens.from_model(model)
    with torch.no_grad():
        for param in tuned.parameters():
            param.normal_(0, 0.1, generator=generator)
    matrix = layer_transfer(model, tuned, token_batches, matmul_dtype=torch.float32)
    per_layer = evaluate_lenses(model, {"tuned": tuned}, token_batches)["lenses"]["tuned"]
    assert matrix.shape == (N_LAYERS, N_LAYERS)
    np.testing.assert_allclose(np.diag(matrix), per_layer["kl_to_output"][:-1], atol=1e-5)
    assert not np.allclose(matrix, np.diag(np.diag(matrix)))  # off-diagonal cells differ

    identity = layer_transfer(model, TunedLens.from_model(model), token_batches)
    logit = evaluate_lenses(model, {"logit": LogitLens.from_model(model)}, token_batches)
    # Identity translators: every row reads layer j like the logit lens (bf16 matmuls).
    expected = np.array(logit["lenses"]["logit"]["kl_to_output"][:-1])
    np.testing.assert_allclose(identity, np.broadcast_to(expected, identity.shape), rtol=0.02)
    assert len(transfer_figure(matrix, "tuned").data) == 1
