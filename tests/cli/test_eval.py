"""`hooklens eval` on too little text, and `--record-logit-stats`.

Too short a held-out split is one `DataError` line before anything is written; asking
for more tokens than there are is said (stderr, `FewerTokensWarning` from the API) and
both numbers are recorded; the marginals are written beside the JSON with their KLs.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from hooklens import LogitLens, PredictionTrajectory, TunedLens, next_token_targets
from hooklens.cli import eval as evaluation
from hooklens.cli import main
from hooklens.evaluation import FewerTokensWarning, LayerMarginals, evaluate_lenses
from hooklens.training.data import pack, split_texts
from tests.conftest import N_LAYERS, VOCAB

SEQ_LEN = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "texts.jsonl"
    rows = [" ".join(f"w{4 + (i * 7 + j) % 90}" for j in range(40)) for i in range(60)]
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    return path


def _held_out_chunks(corpus, tokenizer, seq_len: int) -> int:
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    return sum(1 for _ in pack(split_texts(texts, held_out=True), tokenizer, seq_len))


def test_too_short_a_held_out_split_is_said_before_anything_is_written(
    capsys, loads, corpus, word_tokenizer, tmp_path, monkeypatch
):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated a split that holds no chunk")

    monkeypatch.setattr(evaluation, "evaluate_lenses", no_evaluation)
    out = tmp_path / "eval.json"
    arguments = ["eval", "--data", str(corpus), "--seq-len", "4096", "--output", str(out)]
    assert main([*arguments, "--record-logit-stats"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    found = int(err.split(" has ")[1].split(" tokens")[0])
    assert (
        f"the held-out split of {corpus} has {found} tokens, fewer than one chunk of "
        "seq_len=4096; pass a smaller seq_len (hooklens eval: --seq-len) or more text" in err
    )
    # N is the split's length: one chunk of exactly N tokens, none of N + 1
    assert _held_out_chunks(corpus, word_tokenizer, found) == 1
    assert _held_out_chunks(corpus, word_tokenizer, found + 1) == 0
    assert list(tmp_path.iterdir()) == []  # no JSON, no figures, no statistics


def test_asking_for_more_tokens_than_the_split_holds_says_so_and_records_both(
    capsys, loads, corpus, word_tokenizer, tmp_path
):
    out = tmp_path / "eval.json"
    arguments = ["eval", "--data", str(corpus), "--seq-len", str(SEQ_LEN), "--output", str(out)]
    assert main([*arguments, "--tokens", "100000"]) == 0
    results = json.loads(out.read_text())
    chunks = _held_out_chunks(corpus, word_tokenizer, SEQ_LEN)
    assert 0 < chunks * SEQ_LEN < 100_000
    assert results["tokens"] == chunks * SEQ_LEN
    assert results["tokens_requested"] == 100_000
    err = capsys.readouterr().err
    assert (
        f"evaluated {chunks * SEQ_LEN} of the 100000 tokens asked for (--tokens): the "
        f"held-out split of {corpus} holds only {chunks} chunks of {SEQ_LEN} tokens" in err
    )

    assert main([*arguments, "--tokens", str(SEQ_LEN)]) == 0  # enough text: no notice
    assert "evaluated" not in capsys.readouterr().err
    results = json.loads(out.read_text())
    assert results["tokens"] == results["tokens_requested"] == SEQ_LEN


def test_the_api_warns_when_the_batches_hold_fewer_tokens_than_requested(model):
    batches = [torch.randint(4, 10, (2, 6), generator=torch.Generator().manual_seed(0))]
    lenses = {"logit": LogitLens.from_model(model)}
    with pytest.warns(FewerTokensWarning, match="evaluated 12 of the 100 tokens asked for"):
        results = evaluate_lenses(model, lenses, batches, tokens_requested=100)
    assert issubclass(FewerTokensWarning, UserWarning)
    assert (results["tokens"], results["tokens_requested"]) == (12, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate_lenses(model, lenses, batches, tokens_requested=12)["tokens"] == 12


def test_marginals_are_the_mean_distributions_of_every_lens_row(model):
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(4, VOCAB, (2, 6), generator=generator) for _ in range(2)]
    tuned = TunedLens.from_model(model)
    with torch.no_grad():
        for param in tuned.parameters():
            param.normal_(0, 0.1, generator=generator)
    lenses = {"logit": LogitLens.from_model(model), "tuned": tuned}
    marginals = LayerMarginals()
    results = evaluate_lenses(model, lenses, batches, marginals=marginals)
    sums = {name: np.zeros((N_LAYERS + 1, VOCAB)) for name in lenses}
    for tokens in batches:
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
        for name, lens in lenses.items():
            trajectory = PredictionTrajectory.from_lens_and_cache(
                lens, tokens, cache, logits, targets=next_token_targets(tokens)
            )
            for layer in range(N_LAYERS + 1):
                probs = trajectory.layer_log_probs(layer).double().exp()
                sums[name][layer] += probs.reshape(-1, VOCAB).sum(0).numpy()
    output = sums["logit"][-1] / 24
    np.testing.assert_allclose(marginals.output.marginal_probs, output, rtol=1e-5, atol=1e-9)
    for name in lenses:
        means = sums[name] / 24
        for layer in range(N_LAYERS):
            np.testing.assert_allclose(
                marginals.lenses[name][layer].marginal_probs, means[layer], rtol=1e-5, atol=1e-9
            )
        expected_kl = [(output * np.log(output / means[layer])).sum() for layer in range(N_LAYERS)]
        kl = results["lenses"][name]["marginal_kl_to_output"]
        np.testing.assert_allclose(kl, [*expected_kl, 0.0], rtol=1e-4, atol=1e-6)
    assert results["lenses"]["tuned"]["marginal_kl_to_output"][0] != pytest.approx(
        results["lenses"]["logit"]["marginal_kl_to_output"][0]
    )


def test_the_results_record_their_provenance_and_each_lens_files(
    capsys, loads, corpus, tmp_path, model
):
    lens_dir = tmp_path / "lenses" / "tuned"
    lens = TunedLens.from_model(model)
    lens.fit_settings = {"method": "fast fit", "alpha": 0.5}
    lens.save(lens_dir)
    out = tmp_path / "eval.json"
    arguments = ["eval", "--data", str(corpus), "--seq-len", str(SEQ_LEN), "--tokens", "16"]
    assert main([*arguments, "--lens", str(lens_dir), "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    versions = {name: results["provenance"][name] for name in ("torch", "transformers")}
    assert versions == {"torch": torch.__version__, "transformers": transformers.__version__}
    assert results["provenance"]["model_name"] == model.cfg.model_name
    assert results["provenance"]["settings"]["seq_len"] == SEQ_LEN
    assert results["lens_provenance"]["logit lens"] is None  # no file
    recorded = json.loads((lens_dir / "config.json").read_text())["provenance"]
    assert results["lens_provenance"]["lenses/tuned"] == recorded
    printed = capsys.readouterr().out
    assert f"lenses/tuned: hooklens {recorded['hooklens']}; torch {torch.__version__};" in printed
    assert "settings alpha=0.5, method=fast fit" in printed  # as the config sorts them


def test_record_logit_stats_writes_the_marginals_beside_the_json(
    capsys, loads, corpus, tmp_path, model
):
    lens_dir = tmp_path / "lenses" / "tuned"
    TunedLens.from_model(model).save(lens_dir)
    out = tmp_path / "eval.json"
    arguments = ["eval", "--data", str(corpus), "--seq-len", str(SEQ_LEN), "--tokens", "32"]
    arguments += ["--lens", str(lens_dir), "--record-logit-stats", "--output", str(out)]
    assert main(arguments) == 0
    results = json.loads(out.read_text())
    stats_file = tmp_path / "eval.logit-stats.safetensors"
    assert results["logit_stats"] == {"file": stats_file.name, "tokens": 32}
    assert str(stats_file) in capsys.readouterr().out
    with safe_open(stats_file, "pt") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
        assert file.metadata()["tokens"] == "32"
    names = ["logit lens", "lenses/tuned"]
    assert set(tensors) == {"output"} | {f"{n}/{layer}" for n in names for layer in range(N_LAYERS)}
    output = tensors["output"].numpy()
    for name in names:
        assert set(results["lenses"][name]) >= {"kl_to_output", "marginal_kl_to_output"}
        kls = []
        for layer in range(N_LAYERS):
            marginal = tensors[f"{name}/{layer}"]
            assert marginal.dtype == torch.float64 and marginal.shape == (VOCAB,)
            assert marginal.sum().item() == pytest.approx(1.0, abs=1e-9)
            kls.append((output * np.log(output / marginal.numpy())).sum())
        np.testing.assert_allclose(
            results["lenses"][name]["marginal_kl_to_output"], [*kls, 0.0], rtol=1e-5, atol=1e-6
        )

    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--record-logit-stats" in help_text and "marginal_kl_to_output" in help_text


def test_patchscope_adds_its_column_and_says_what_it_read(capsys, loads, corpus, tmp_path):
    out = tmp_path / "eval.json"
    arguments = ["eval", "--data", str(corpus), "--seq-len", str(SEQ_LEN), "--tokens", "32"]
    assert main([*arguments, "--patchscope", "5", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results["lenses"]) == ["logit lens", "token-identity patchscope"]
    scope = results["lenses"]["token-identity patchscope"]
    assert len(scope["kl_to_output"]) == N_LAYERS + 1 and scope["kl_to_output"][-1] == 0.0
    assert results["patchscope"]["positions"] == 5
    assert results["patchscope"]["target"].endswith("?")
    printed = capsys.readouterr().out
    assert "token-identity patchscope: 5 of those positions" in printed
    assert "| layer | logit lens | token-identity patchscope |" in printed
    assert main([*arguments, "--patchscope", "-1", "--output", str(out)]) == 2


def test_the_held_out_split_is_a_library_function_of_plain_values(corpus, word_tokenizer):
    """What `hooklens eval` reads, without a command line: the same chunks, the same
    count, the same refusal."""
    from hooklens.errors import DataError
    from hooklens.evaluation import held_out_chunks, held_out_token_count

    chunks = list(held_out_chunks(str(corpus), word_tokenizer, SEQ_LEN))
    assert len(chunks) == _held_out_chunks(corpus, word_tokenizer, SEQ_LEN) > 0
    found = held_out_token_count(str(corpus), word_tokenizer)
    assert _held_out_chunks(corpus, word_tokenizer, found) == 1
    with pytest.raises(DataError, match=f"the held-out split of .* has {found} tokens"):
        held_out_chunks(str(corpus), word_tokenizer, found + 1)
