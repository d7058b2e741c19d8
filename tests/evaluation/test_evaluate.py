"""Per-layer evaluation numbers are the trajectory's, averaged the right way."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from hooklens import LogitLens, PredictionTrajectory, TunedLens, next_token_targets
from hooklens.evaluation.held_out import evaluate_lenses, figure, layer_transfer, transfer_figure
from hooklens.evaluation.per_layer import SHOWN, html_table, layer_means, layer_sums, markdown_table
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


def test_evaluation_caches_only_the_residuals_its_lenses_read(model_zoo, monkeypatch):
    """A whole cache is ~2.8 GB per 1,024 SmolLM2 tokens; `hooklens eval --tokens 4096`
    with three lenses once ran out of 24 GB holding it. Only residual hooks, for every
    lens's component, may be cached, and each batch's cache is gone before the next."""
    import weakref

    from hooklens import JacobianLens
    from hooklens.core import ModelAdapter

    model = model_zoo["bridge-llama"]
    adapter = ModelAdapter(model)
    lenses = {
        "logit": LogitLens.from_model(model),
        "jacobian": JacobianLens.from_model(model, component="resid_post"),
    }
    cached, alive = [], []
    real = model.run_with_cache

    def recording(*args, **kwargs):
        logits, cache = real(*args, **kwargs)
        alive.append(sum(ref() is not None for ref in cached))
        cached.append(weakref.ref(cache))
        recording.keys = set(cache.keys())
        return logits, cache

    monkeypatch.setattr(model, "run_with_cache", recording)
    generator = torch.Generator().manual_seed(0)
    token_batches = [torch.randint(4, 10, (2, 6), generator=generator) for _ in range(3)]
    results = evaluate_lenses(model, lenses, token_batches)
    read = set(adapter.residual_hook_names("resid_pre") + adapter.residual_hook_names("resid_post"))
    assert recording.keys == read
    assert alive == [0, 0, 0]  # no earlier batch's cache outlived its batch
    assert results["tokens"] == 36


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


def _trajectory(model, lens, tokens, attention_mask=None):
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    return PredictionTrajectory.from_lens_and_cache(
        lens,
        tokens,
        cache,
        logits,
        targets=next_token_targets(tokens, attention_mask),
        attention_mask=attention_mask,
    )


def test_layer_means_are_float64_means_over_the_cells_that_have_a_value(model_zoo):
    model = model_zoo["bridge-llama"]
    lens = LogitLens.from_model(model)
    tokens = torch.randint(4, 10, (2, 7), generator=torch.Generator().manual_seed(2))
    trajectory = _trajectory(model, lens, tokens)
    means = layer_means(trajectory)
    output = trajectory.layer_log_probs(-1).double()
    for layer in range(N_LAYERS + 1):
        lens_lp = trajectory.layer_log_probs(layer).double()
        kl = (output.exp() * (output - lens_lp)).sum(-1)  # [batch, pos]
        ce = -lens_lp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # no target at the end
        agree = (lens_lp.argmax(-1) == output.argmax(-1)).double()
        assert means["kl_to_output"][layer] == pytest.approx(kl.mean().item(), abs=1e-5)
        assert means["cross_entropy"][layer] == pytest.approx(ce.mean().item(), rel=1e-5)
        assert means["top1_agreement"][layer] == pytest.approx(agree.mean().item(), abs=1e-9)


def test_layer_sums_leave_padding_out_so_batches_add_up(model_zoo):
    """A right-padded batch sums to what its sequences give read one at a time."""
    model = model_zoo["bridge-llama"]
    lens = LogitLens.from_model(model)
    tokens = torch.randint(4, 10, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(tokens)
    mask[1, 4:] = 0
    padded = layer_sums(_trajectory(model, lens, tokens, mask))
    alone = [
        layer_sums(_trajectory(model, lens, tokens[:1])),
        layer_sums(_trajectory(model, lens, tokens[1:, :4])),
    ]
    for metric, (total, count) in padded.items():
        expected_total = alone[0][metric][0] + alone[1][metric][0]
        expected_count = alone[0][metric][1] + alone[1][metric][1]
        np.testing.assert_array_equal(count, expected_count)
        np.testing.assert_allclose(total, expected_total, rtol=1e-4, atol=1e-5)
    assert padded["top1_agreement"][1][0] == 6 + 4  # padded cells count for nothing
    assert padded["cross_entropy"][1][0] == 5 + 3  # and the last real token has no target


def test_markdown_and_html_tables_have_a_row_per_layer_and_a_column_per_lens():
    per_layer = {
        "logit lens": {m: [0.5, 0.25, 0.0] for m in SHOWN},
        "a <tuned> lens": {m: [0.4, 0.125, 0.0] for m in SHOWN},
    }
    rows = markdown_table(per_layer, "kl_to_output").splitlines()
    assert rows[0] == "| layer | logit lens | a <tuned> lens |"
    assert rows[2:] == [
        "| 0 | 0.500 | 0.400 |",
        "| 1 | 0.250 | 0.125 |",
        "| output | 0.000 | 0.000 |",
    ]
    table = html_table(per_layer)
    assert table.count("</td></tr>") == 3 and "a &lt;tuned&gt; lens" in table
    assert table.count("<td>") == 3 * len(SHOWN) * 2


# --- hooklens eval's output files: never two on one path, never two runs on one file ---


@pytest.fixture
def eval_corpus(tmp_path):
    import json

    path = tmp_path / "texts.jsonl"
    rows = [" ".join(f"w{4 + (i * 7 + j) % 90}" for j in range(40)) for i in range(60)]
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    return path


@pytest.fixture
def eval_model(monkeypatch, model_zoo):
    """`models.load` returns the tiny llama bridge; the names asked for are recorded."""
    from hooklens import models

    asked: list[str] = []

    def load(name, **kwargs):
        asked.append(name)
        return model_zoo["bridge-llama"]

    monkeypatch.setattr(models, "load", load)
    return asked


def _eval(corpus, output, *extra):
    from hooklens.cli import main

    arguments = ["eval", "--data", str(corpus), "--output", str(output), "--seq-len", "16"]
    return main([*arguments, "--tokens", "32", *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("name", ["ev.html", "ev.HTML"])
def test_eval_refuses_results_named_like_its_figures_page_before_loading(
    eval_model, eval_corpus, tmp_path, capsys, name
):
    """Was: the results JSON written to ev.html, then overwritten by the figures page,
    exit 0 with "wrote ev.html and ev.html"."""
    assert _eval(eval_corpus, tmp_path / name) == 2
    err = _one_line(capsys)
    assert f"--output {tmp_path / name}: the figures would be written over the results" in err
    assert f"like --output {tmp_path / 'ev.json'}" in err
    assert eval_model == []  # refused before the model loads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.jsonl"]  # nothing written


def test_eval_writes_results_and_figures_apart_and_says_which(
    eval_model, eval_corpus, tmp_path, capsys
):
    import json

    output = tmp_path / "ev.json"
    assert _eval(eval_corpus, output, "--record-logit-stats") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    stats = tmp_path / "ev.logit-stats.safetensors"
    assert last == (
        f"wrote {output} (results), {tmp_path / 'ev.html'} (figures) and {stats} (logit stats)"
    )
    results = json.loads(output.read_text())
    assert results["logit_stats"]["file"] == stats.name
    assert (tmp_path / "ev.html").read_text().startswith("<!DOCTYPE html>")
    assert stats.is_file()
    assert not list(tmp_path.glob(".*"))  # no lock file and no temporary left behind


def test_eval_refuses_a_figures_page_path_that_is_a_directory(
    eval_model, eval_corpus, tmp_path, capsys
):
    (tmp_path / "ev.html").mkdir()
    assert _eval(eval_corpus, tmp_path / "ev.json") == 2
    assert f"its figures go to {tmp_path / 'ev.html'}, which is a directory" in _one_line(capsys)
    assert eval_model == []


def test_eval_into_files_another_run_owns_is_refused_before_loading(
    eval_model, eval_corpus, tmp_path, capsys
):
    """ev.json and ev.txt share their figures page ev.html: one run at a time owns it."""
    from hooklens.artifacts import output_lock

    with output_lock(tmp_path / "ev.html", "hooklens eval"):
        assert _eval(eval_corpus, tmp_path / "ev.txt") == 2
    err = _one_line(capsys)
    assert f"{tmp_path / 'ev.html'} is in use by another run: process {os.getpid()} on" in err
    assert "(hooklens eval, since " in err
    assert err.rstrip().endswith("wait for that run to end, or choose another --output")
    assert eval_model == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.jsonl"]
    assert _eval(eval_corpus, tmp_path / "ev.txt") == 0  # released: the retry runs


def test_eval_on_a_full_disk_says_so_and_keeps_the_earlier_files(
    eval_model, eval_corpus, tmp_path, capsys, monkeypatch
):
    from hooklens.cli import eval as evaluate

    output = tmp_path / "ev.json"
    assert _eval(eval_corpus, output) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    class SafetensorError(Exception):  # what safetensors raises, text and all
        pass

    def full(*args, **kwargs):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(evaluate, "save_file", full)
    capsys.readouterr()
    assert _eval(eval_corpus, output, "--record-logit-stats") == 2
    err = _one_line(capsys)
    stats = tmp_path / "ev.logit-stats.safetensors"
    assert f"could not write {stats}: the disk is full" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # all or nothing
