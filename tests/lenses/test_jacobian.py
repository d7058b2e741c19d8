"""JacobianLens: the logit lens at J = I, TransformerLens's readout for its fitted lenses,
both file formats, and refusals of lenses or files that do not fit."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
import torch

from hooklens import JacobianLens, LensFileError, LensMismatchError, LogitLens
from hooklens.trajectory import PredictionTrajectory, next_token_targets
from tests.conftest import D_MODEL, N_LAYERS, VOCAB

PROMPTS = [" ".join(f"w{4 + (7 * i + 3 * j) % 6}" for j in range(12)) for i in range(6)]


@pytest.fixture(scope="module")
def bridge(model_zoo):
    return model_zoo["bridge-llama"]  # raw: what J-lenses are fitted on


@pytest.fixture(scope="module")
def tl_lens(bridge):
    """A J-lens fitted by TransformerLens itself on the tiny bridge."""
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

    return TLJacobianLens.fit(
        bridge,
        PROMPTS,
        corpus="test words",
        max_seq_len=16,
        skip_first_positions=2,
        show_progress=False,
    )


def _trajectory(lens, model, ids):
    logits, cache = model.run_with_cache(ids)
    return PredictionTrajectory.from_lens_and_cache(
        lens,
        ids,
        cache,
        logits,
        targets=next_token_targets(ids),
        residual_component=lens.component,
    )


def test_identity_jacobians_are_exactly_the_logit_lens(bridge):
    ids = bridge.to_tokens(PROMPTS[:2])
    jlens = _trajectory(JacobianLens.from_model(bridge), bridge, ids)
    logit = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(bridge),
        ids,
        *reversed(bridge.run_with_cache(ids)),
        targets=next_token_targets(ids),
    )
    for statistic in ("entropy", "cross_entropy", "forward_kl"):
        np.testing.assert_array_equal(
            getattr(jlens, statistic)().stats, getattr(logit, statistic)().stats
        )


def test_a_transformer_lens_fit_reads_as_transformer_lens_reads_it(bridge, tl_lens, tmp_path):
    path = tmp_path / "jlens.pt"
    tl_lens.save(str(path), dtype=torch.float32)
    ours = JacobianLens.load(path, model=bridge)
    assert ours.fitted_layers == tl_lens.source_layers == list(range(N_LAYERS - 1))
    ids = bridge.to_tokens(PROMPTS[3])
    middle = 1  # TransformerLens's source layer: the output of block 1 = our row 2
    readout = tl_lens.readout(bridge, ids, layers=[middle], return_full_logits=True)
    expected = torch.log_softmax(readout.lens_logits[middle].double(), dim=-1)
    traj = _trajectory(ours, bridge, ids)
    got = traj.layer_log_probs(middle + 1)[0].double()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    post = JacobianLens.load(tmp_path / "jlens.pt", model=bridge, component="resid_post")
    got = _trajectory(post, bridge, ids).layer_log_probs(middle)[0].double()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # and the J-lens is not the logit lens there
    logit = _trajectory(JacobianLens.from_model(bridge), bridge, ids).layer_log_probs(middle + 1)
    assert (logit[0].double() - expected).abs().max() > 1e-2


def test_objects_convert_both_ways_with_transformer_lens(bridge, tl_lens):
    ours = JacobianLens.from_transformer_lens(tl_lens, bridge)
    back = ours.to_transformer_lens()
    assert back.source_layers == tl_lens.source_layers and back.n_prompts == tl_lens.n_prompts
    for layer in tl_lens.source_layers:
        torch.testing.assert_close(back.jacobians[layer], tl_lens.jacobians[layer])
        torch.testing.assert_close(ours.jacobian(layer), tl_lens.jacobians[layer])


@pytest.mark.parametrize("name", ["lens", "lens.pt"])
def test_save_and_load_round_trip_in_both_formats(bridge, tl_lens, tmp_path, name):
    lens = JacobianLens.from_transformer_lens(tl_lens, bridge)
    lens.save(tmp_path / name)
    loaded = JacobianLens.load(tmp_path / name, model=bridge)
    atol = 0 if name == "lens" else 1e-3  # the reference format stores float16
    for layer in lens.fitted_layers:
        torch.testing.assert_close(
            loaded.jacobian(layer), lens.jacobian(layer), atol=atol, rtol=atol
        )
    assert loaded.n_prompts == len(PROMPTS)


def test_transformer_lens_reads_our_reference_file(bridge, tl_lens, tmp_path):
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

    JacobianLens.from_transformer_lens(tl_lens, bridge).save(tmp_path / "ours.pt")
    theirs = TLJacobianLens.load(str(tmp_path / "ours.pt"))
    assert theirs.source_layers == tl_lens.source_layers
    torch.testing.assert_close(theirs.jacobians[0], tl_lens.jacobians[0], atol=1e-3, rtol=1e-3)


def test_a_fit_checkpoint_loads_as_the_mean_of_its_sums(bridge, tl_lens, tmp_path):
    n = 4
    checkpoint = {
        "jacobian_sum": {k: v * n for k, v in tl_lens.jacobians.items()},
        "n_done": n,
        "source_layers": tl_lens.source_layers,
        "target_layer": N_LAYERS - 1,
    }
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    lens = JacobianLens.load(tmp_path / "ckpt.pt", model=bridge)
    torch.testing.assert_close(lens.jacobian(1), tl_lens.jacobians[1])
    assert lens.n_prompts == n


def test_a_lens_for_another_model_is_refused(model_zoo, tl_lens, tmp_path):
    tl_lens.save(str(tmp_path / "jlens.pt"))
    with pytest.raises(LensMismatchError, match="fitted for 'tiny-llama'"):
        JacobianLens.load(tmp_path / "jlens.pt", model=model_zoo["bridge-gpt2"])
    wide = {0: torch.eye(D_MODEL + 1)}
    torch.save({"J": wide, "n_prompts": 1, "d_model": D_MODEL + 1}, tmp_path / "wide.pt")
    with pytest.raises(LensMismatchError, match="another model"):
        JacobianLens.load(tmp_path / "wide.pt", model=model_zoo["bridge-llama"])


def test_a_processed_model_is_refused(model_zoo, tl_lens, tmp_path):
    tl_lens.save(str(tmp_path / "jlens.pt"))
    with pytest.raises(LensMismatchError, match="raw activations"):
        JacobianLens.load(tmp_path / "jlens.pt", model=model_zoo["bridge-llama-compat"])


def test_a_truncated_file_is_refused(bridge, tl_lens, tmp_path):
    path = tmp_path / "jlens.pt"
    tl_lens.save(str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LensFileError, match="truncated"):
        JacobianLens.load(path, model=bridge)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"{sys.executable} -c \"open('{self.marker}', 'w')\"",))


def test_a_pickle_payload_is_refused_without_running(bridge, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as file:
        pickle.dump({"J": {0: _Payload(str(marker))}, "n_prompts": 1, "d_model": D_MODEL}, file)
    with pytest.raises(LensFileError, match="weights_only"):
        JacobianLens.load(path, model=bridge)
    assert not marker.exists()


def test_a_trajectory_refuses_another_residual_component(bridge):
    ids = bridge.to_tokens(PROMPTS[0])
    _, cache = bridge.run_with_cache(ids)
    with pytest.raises(LensMismatchError, match="reads resid_pre, not resid_post"):
        JacobianLens.from_model(bridge).log_probs(cache, 1, "resid_post")
    assert JacobianLens.from_model(bridge).log_probs(cache, 1).shape[-1] == VOCAB


def test_a_trajectory_reads_the_lens_own_component_by_default(bridge, tl_lens):
    """A resid_post J-lens needs no residual_component=: it reads its own residual."""
    lens = JacobianLens.from_transformer_lens(tl_lens, bridge, component="resid_post")
    ids = bridge.to_tokens(PROMPTS[:2])
    logits, cache = bridge.run_with_cache(ids)
    default = PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits)
    assert default.residual_component == "resid_post"
    explicit = _trajectory(lens, bridge, ids)
    np.testing.assert_array_equal(default.entropy().stats, explicit.entropy().stats)
    from_model = PredictionTrajectory.from_lens_and_model(lens, bridge, ids)
    assert from_model.residual_component == "resid_post"
    np.testing.assert_allclose(from_model.entropy().stats, default.entropy().stats, atol=1e-5)
    with pytest.raises(LensMismatchError, match="reads resid_post, not resid_pre"):
        PredictionTrajectory.from_lens_and_cache(
            lens, ids, cache, logits, residual_component="resid_pre"
        )


def test_block_inputs_and_outputs_index_the_same_readout_one_row_apart(bridge, tl_lens):
    ids = bridge.to_tokens(PROMPTS[:2])
    pre = _trajectory(JacobianLens.from_transformer_lens(tl_lens, bridge), bridge, ids)
    post = _trajectory(
        JacobianLens.from_transformer_lens(tl_lens, bridge, component="resid_post"), bridge, ids
    )
    rows_pre, rows_post = pre.entropy().stats, post.entropy().stats  # [batch, layer + 1, pos]
    np.testing.assert_allclose(rows_pre[:, 1:-1], rows_post[:, :-2], atol=1e-6)


def _fit(model, **kwargs):
    return JacobianLens.fit(
        model, PROMPTS, max_seq_len=16, skip_first_positions=2, progress=False, **kwargs
    )


def test_our_exact_fit_equals_transformer_lens_fit(bridge, tl_lens):
    ours = _fit(bridge)
    assert ours.n_prompts == tl_lens.n_prompts == len(PROMPTS)
    for layer in tl_lens.source_layers:
        expected = tl_lens.jacobians[layer].double()
        gap = (ours.jacobian(layer).double() - expected).abs().max() / expected.abs().max()
        assert gap <= 1e-4, (layer, gap)


def test_dim_batch_does_not_change_the_fit(bridge):
    one, many = (
        _fit(bridge, dim_batch=1, source_layers=[1]),
        _fit(bridge, dim_batch=5, source_layers=[1]),
    )
    torch.testing.assert_close(one.jacobian(1), many.jacobian(1), atol=1e-5, rtol=1e-5)


def test_an_interrupted_fit_resumes_to_the_same_matrices(bridge, tmp_path, monkeypatch):
    from hooklens.lenses import jacobian_estimator as jacobian_fit

    whole = _fit(bridge)
    checkpoint = tmp_path / "fit.pt"
    real = jacobian_fit.prompt_jacobians
    calls = []

    def dies_on_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(jacobian_fit, "prompt_jacobians", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        JacobianLens.fit(
            bridge, PROMPTS, max_seq_len=16, skip_first_positions=2, progress=False,
            checkpoint=checkpoint, checkpoint_every=2,
        )  # fmt: skip
    monkeypatch.setattr(jacobian_fit, "prompt_jacobians", real)
    # the checkpoint is the reference's running-sum format: loadable as a lens already
    partial = JacobianLens.load(checkpoint, model=bridge)
    assert partial.n_prompts == 4  # checkpoints after prompts 2 and 4; killed in the 5th
    resumed = _fit(bridge, checkpoint=checkpoint)
    for layer in whole.fitted_layers:
        torch.testing.assert_close(resumed.jacobian(layer), whole.jacobian(layer))


def test_fitting_a_processed_model_is_refused(model_zoo):
    with pytest.raises(LensMismatchError, match="raw activations"):
        _fit(model_zoo["bridge-llama-compat"])


def test_hooklens_eval_and_report_take_a_jacobian_lens_file(bridge, tl_lens, tmp_path, monkeypatch):
    import json

    from hooklens import models
    from hooklens.cli import main

    monkeypatch.setattr(models, "load", lambda name, **kwargs: bridge)
    lens_file = tmp_path / "jlens.pt"
    tl_lens.save(str(lens_file))
    corpus = tmp_path / "texts.jsonl"
    rows = [" ".join(f"w{4 + (i * 7 + j) % 6}" for j in range(40)) for i in range(60)]
    corpus.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    out = tmp_path / "eval.json"
    arguments = ["--lens", str(lens_file), "--data", str(corpus), "--seq-len", "16"]
    assert main(["eval", *arguments, "--tokens", "64", "--output", str(out)]) == 0
    results = json.loads(out.read_text())["lenses"]
    logit, jlens = results["logit lens"], results[f"{tmp_path.name}/jlens.pt"]
    assert len(jlens["kl_to_output"]) == N_LAYERS + 1
    assert jlens["kl_to_output"][0] == logit["kl_to_output"][0]  # the embeddings: no J
    assert jlens["kl_to_output"][1] != logit["kl_to_output"][1]
    assert jlens["kl_to_output"][-1] == logit["kl_to_output"][-1] == 0
    report = tmp_path / "report.html"
    assert (
        main(["report", "--text", PROMPTS[0], "--lens", str(lens_file), "--output", str(report)])
        == 0
    )
    assert "Jacobian lens" in report.read_text()


@pytest.mark.slow
def test_on_the_embedded_model_fit_and_readout_equal_transformer_lens(tmp_path):
    """SmolLM2 (raw bridge), one source layer, one short prompt: TransformerLens's fit,
    saved and loaded by us, reads as its readout; and our fit equals its fit."""
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

    from hooklens import models

    model = models.load("smollm2-135m", model_class="bridge")
    prompt = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France, and"
    layer = model.cfg.n_layers // 2
    settings = dict(source_layers=[layer], max_seq_len=20, skip_first_positions=4)
    theirs = TLJacobianLens.fit(model, [prompt], corpus="one", show_progress=False, **settings)
    theirs.save(str(tmp_path / "jlens.pt"), dtype=torch.float32)
    ours = JacobianLens.load(tmp_path / "jlens.pt", model=model, component="resid_post")
    ids = model.to_tokens(prompt)
    readout = theirs.readout(model, ids, layers=[layer], return_full_logits=True)
    expected = torch.log_softmax(readout.lens_logits[layer].double(), dim=-1)
    logits, cache = model.run_with_cache(ids)
    traj = PredictionTrajectory.from_lens_and_cache(
        ours, ids, cache, logits, residual_component=ours.component
    )
    torch.testing.assert_close(traj.layer_log_probs(layer)[0].double(), expected, atol=1e-4, rtol=0)
    fitted = JacobianLens.fit(model, [prompt], progress=False, **settings)
    reference = theirs.jacobians[layer].double()
    gap = (fitted.jacobian(layer).double() - reference).abs().max() / reference.abs().max()
    assert gap <= 1e-4


def test_hooklens_fit_jlens_fits_what_the_api_fits(bridge, tmp_path, monkeypatch, capsys):
    import json

    from hooklens import models
    from hooklens.cli import main
    from hooklens.training.data import split_texts

    monkeypatch.setattr(models, "load", lambda name, **kwargs: bridge)
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS * 3))
    out = tmp_path / "jlens.pt"
    arguments = ["fit-jlens", "--data", str(corpus), "--output", str(out), "--prompts", "4"]
    arguments += ["--max-seq-len", "16", "--skip-first", "2", "--no-progress"]
    assert main(arguments) == 0
    prompts = list(split_texts(PROMPTS * 3, held_out=False))[:4]
    expected = JacobianLens.fit(
        bridge, prompts, max_seq_len=16, skip_first_positions=2, progress=False
    )
    got = JacobianLens.load(out, model=bridge)
    for layer in expected.fitted_layers:
        torch.testing.assert_close(
            got.jacobian(layer), expected.jacobian(layer), atol=1e-3, rtol=1e-3
        )
    capsys.readouterr()
    assert main(arguments) == 2  # the lens exists: no silent overwrite
    assert "pass --resume" in capsys.readouterr().err


def test_hooklens_fit_jlens_resumes_an_interrupted_fit(bridge, tmp_path, monkeypatch):
    import json

    from hooklens import models
    from hooklens.cli import main
    from hooklens.lenses import jacobian_estimator as jacobian_fit

    monkeypatch.setattr(models, "load", lambda name, **kwargs: bridge)
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    arguments = ["fit-jlens", "--data", str(corpus), "--prompts", "6", "--max-seq-len", "16"]
    arguments += ["--skip-first", "2", "--no-progress", "--checkpoint-every", "1"]
    assert main([*arguments, "--output", str(tmp_path / "whole.pt")]) == 0
    real, calls = jacobian_fit.prompt_jacobians, []

    def dies_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(jacobian_fit, "prompt_jacobians", dies_on_the_fourth)
    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        main([*arguments, "--output", str(out)])
    assert jacobian_fit.checkpoint_path(out).is_file() and not out.exists()
    monkeypatch.setattr(jacobian_fit, "prompt_jacobians", real)
    assert main([*arguments, "--output", str(out), "--resume"]) == 0
    assert not jacobian_fit.checkpoint_path(out).exists()
    whole, resumed = (
        JacobianLens.load(tmp_path / n, model=bridge) for n in ("whole.pt", "resumed.pt")
    )
    for layer in whole.fitted_layers:
        torch.testing.assert_close(resumed.jacobian(layer), whole.jacobian(layer))
