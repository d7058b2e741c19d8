"""J-lens files and fits, issue 23: every `.pt` hooklens writes records what a check needs
and is verified on load; a fit checkpoint whose count disagrees with its sums is refused;
bad files and bad fit arguments are refused by name, before anything expensive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hooklens import JacobianLens, LensFileError, LensMismatchError, RunStateError
from hooklens.core import ModelAdapter
from hooklens.errors import InputError, InputTypeError
from hooklens.lenses import jacobian_estimator as jacobian_fit
from tests.conftest import D_MODEL, N_LAYERS, VOCAB, flip_in_zip_member


def content_sha256(value) -> str:
    from hooklens.artifacts import content_sha256  # new in issue 23: imported when used

    return content_sha256(value)


def load_weights_only(path, what, **kwargs):
    from hooklens.artifacts import load_weights_only

    return load_weights_only(path, what, **kwargs)


PROMPTS = [" ".join(f"w{4 + (7 * i + 3 * j) % 6}" for j in range(12)) for i in range(6)]


@pytest.fixture(scope="module")
def bridge(model_zoo):
    return model_zoo["bridge-llama"]


@pytest.fixture(scope="module")
def deeper(word_tokenizer):
    """`tiny-llama` again, with one block more: the same name, another depth."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS + 1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return TransformerBridge.boot_transformers(
        "tiny-llama", hf_model=LlamaForCausalLM(config).eval(), tokenizer=word_tokenizer
    )


@pytest.fixture(scope="module")
def fitted(bridge):
    return JacobianLens.fit(bridge, PROMPTS, max_seq_len=16, skip_first_positions=2, progress=False)


def _lens(bridge, **kwargs) -> JacobianLens:
    generator = torch.Generator().manual_seed(0)
    matrices = {
        layer: torch.eye(D_MODEL) + 0.05 * torch.randn(D_MODEL, D_MODEL, generator=generator)
        for layer in range(N_LAYERS - 1)
    }
    return JacobianLens.from_model(bridge, matrices, n_prompts=7, **kwargs)


def _edit(path: Path, edit) -> None:
    """Load, edit and save the payload, as a user (or another tool) might."""
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


# --- case 3: our .pt records the model, and a model of another depth is refused -----------


def test_a_pt_lens_fitted_on_three_layers_refuses_a_same_name_four_layer_model(
    fitted, deeper, tmp_path
):
    path = tmp_path / "jlens.pt"
    fitted.save(path)
    with pytest.raises(LensMismatchError) as info:
        JacobianLens.load(path, model=deeper)
    message = str(info.value)
    assert str(path) in message and "3 layers" in message and "4 layers" in message
    assert "fit a lens for this one" in message


def test_the_directory_format_refuses_it_too(fitted, deeper, tmp_path):
    fitted.save(tmp_path / "jlens")
    with pytest.raises(LensMismatchError, match="3 layers"):
        JacobianLens.load(tmp_path / "jlens", model=deeper)


def test_our_pt_records_what_a_check_needs_beside_the_reference_keys(bridge, fitted, tmp_path):
    path = tmp_path / "jlens.pt"
    fitted.save(path)
    payload = torch.load(path, weights_only=True)
    assert {"J", "n_prompts", "source_layers", "d_model", "metadata"} <= set(payload)
    record = payload["hooklens"]
    assert record["n_layers"] == N_LAYERS and record["target_layer"] == N_LAYERS - 1
    assert record["component"] == "resid_pre"
    assert record["fingerprint"] == ModelAdapter(bridge).fingerprint.to_dict()
    assert payload["metadata"]["target_layer"] == N_LAYERS - 1  # what TransformerLens checks
    rest = {key: value for key, value in payload.items() if key != "hooklens_sha256"}
    assert payload["hooklens_sha256"] == content_sha256(rest)


def test_transformer_lens_reads_our_file_and_its_target_layer(fitted, tmp_path):
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

    fitted.save(tmp_path / "jlens.pt", dtype=torch.float32)
    theirs = TLJacobianLens.load(str(tmp_path / "jlens.pt"))
    assert theirs.source_layers == fitted.fitted_layers and theirs.n_prompts == len(PROMPTS)
    assert theirs.metadata["target_layer"] == N_LAYERS - 1
    torch.testing.assert_close(theirs.jacobians[1], fitted.jacobian(1))


def test_the_recorded_component_is_the_default(bridge, tmp_path):
    _lens(bridge, component="resid_post").save(tmp_path / "post.pt")
    assert JacobianLens.load(tmp_path / "post.pt", model=bridge).component == "resid_post"


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.update(n_prompts=p["n_prompts"] + 1),
        lambda p: p["J"][1].__setitem__((0, 0), p["J"][1][0, 0] + 1),
        lambda p: (
            p.update(K=p.pop("J")) or p.update(J=p.pop("K")) or p["J"].update({9: p["J"].pop(1)})
        ),
        lambda p: p["metadata"].update(model_name="another"),
        lambda p: p["hooklens"].update(component="resid_post"),
        lambda p: p.update(extra=1),
    ],
    ids=["n_prompts", "a-matrix-entry", "a-renamed-layer", "metadata", "component", "a-new-key"],
)
def test_a_pt_whose_content_changed_is_refused_by_name(bridge, tmp_path, edit):
    path = tmp_path / "jlens.pt"
    _lens(bridge).save(path)
    _edit(path, edit)
    with pytest.raises(LensFileError, match="checksum") as info:
        JacobianLens.load(path, model=bridge)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["hooklens", "hooklens_sha256"])
def test_a_pt_with_some_of_our_keys_but_not_all_is_refused(bridge, tmp_path, key):
    path = tmp_path / "jlens.pt"
    _lens(bridge).save(path)
    _edit(path, lambda payload: payload.pop(key))
    with pytest.raises(LensFileError, match="cannot be verified") as info:
        JacobianLens.load(path, model=bridge)
    assert str(path) in str(info.value)


def _reseal(path: Path, edit) -> None:
    """An edit that keeps the checksum right: what a file saved for another model holds."""

    def resealed(payload):
        edit(payload)
        payload.pop("hooklens_sha256")
        payload["hooklens_sha256"] = content_sha256(payload)

    _edit(path, resealed)


def test_a_recorded_fingerprint_is_checked_as_a_directory_s(bridge, tmp_path):
    path = tmp_path / "jlens.pt"
    _lens(bridge).save(path)
    _reseal(path, lambda p: p["hooklens"]["fingerprint"].update(unembedding_hash="0" * 64))
    with pytest.raises(LensMismatchError, match="unembedding") as info:
        JacobianLens.load(path, model=bridge)
    assert str(path) in str(info.value)
    with pytest.warns(UserWarning, match="unembedding"):
        assert JacobianLens.load(path, model=bridge, strict=False).fitted_layers == [0, 1]


def test_a_pt_whose_record_contradicts_itself_is_refused(bridge, tmp_path):
    path = tmp_path / "jlens.pt"
    _lens(bridge).save(path)
    _reseal(path, lambda p: p["hooklens"].update(target_layer=1))
    with pytest.raises(LensFileError, match="disagree"):
        JacobianLens.load(path, model=bridge)


def test_foreign_files_load_as_before(bridge, tmp_path):
    """The reference's artifact (four keys) and TransformerLens's (with metadata)."""
    matrices = {0: torch.eye(D_MODEL).half(), 1: 2 * torch.eye(D_MODEL).half()}
    reference = {"J": matrices, "n_prompts": 3, "source_layers": [0, 1], "d_model": D_MODEL}
    torch.save(reference, tmp_path / "reference.pt")
    lens = JacobianLens.load(tmp_path / "reference.pt", model=bridge)
    assert lens.n_prompts == 3 and torch.equal(lens.jacobian(1), 2 * torch.eye(D_MODEL))
    torch.save({**reference, "metadata": {"model_name": "tiny-llama"}}, tmp_path / "tl.pt")
    assert JacobianLens.load(tmp_path / "tl.pt", model=bridge).metadata["model_name"] == (
        "tiny-llama"
    )


# --- case 4: the bytes of every .pt are verified ------------------------------------------------


def test_a_flipped_bit_in_a_matrix_is_refused_by_name(bridge, tmp_path):
    path = tmp_path / "jlens.pt"
    _lens(bridge).save(path)
    flip_in_zip_member(path, "data/0")
    with pytest.raises(LensFileError, match="CRC-32") as info:
        JacobianLens.load(path, model=bridge)
    assert str(path) in str(info.value)


def test_a_flipped_bit_in_a_foreign_file_is_refused_too(tmp_path):
    """No checksum of ours there: the zip archive's CRC-32 catches it."""
    path = tmp_path / "params.pt"
    torch.save({"0.weight": torch.randn(8, 8)}, path)
    flip_in_zip_member(path, "data/0", offset=17)
    with pytest.raises(LensFileError, match="CRC-32") as info:
        load_weights_only(path, "a tuned-lens parameter file")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_a_truncated_pt_names_the_file(bridge, tmp_path, fraction):
    path = tmp_path / "jlens.pt"
    _lens(bridge).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(LensFileError, match="truncated") as info:
        JacobianLens.load(path, model=bridge)
    assert str(path) in str(info.value)


def test_load_weights_only_raises_the_error_class_it_is_given(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(RunStateError, match="start over") as info:
        load_weights_only(path, "a checkpoint", error=RunStateError, advice="start over")
    assert str(path) in str(info.value)


def test_an_os_error_of_the_reader_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "jlens.pt"
    torch.save({"J": {}}, path)

    def invalid(*args, **kwargs):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(torch, "load", invalid)
    with pytest.raises(LensFileError, match="Invalid argument") as info:
        load_weights_only(path, "a Jacobian lens")
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        load_weights_only(tmp_path / "missing.pt", "a Jacobian lens")
    with pytest.raises(IsADirectoryError):
        load_weights_only(tmp_path, "a Jacobian lens")


# --- case 5: a fit checkpoint's count and sums agree, or it is refused ----------------------


def _fit(bridge, checkpoint: Path, prompts=PROMPTS, **kwargs):
    return JacobianLens.fit(
        bridge,
        prompts,
        max_seq_len=16,
        skip_first_positions=2,
        progress=False,
        checkpoint=checkpoint,
        checkpoint_every=2,
        **kwargs,
    )


@pytest.fixture(scope="module")
def partial_checkpoint(bridge, tmp_path_factory):
    """The checkpoint of a fit of the first 4 prompts (what an interrupted fit leaves)."""
    path = tmp_path_factory.mktemp("fit") / "fit.pt"
    _fit(bridge, path, prompts=PROMPTS[:4])
    return path.read_bytes()


@pytest.fixture
def checkpoint(partial_checkpoint, tmp_path):
    path = tmp_path / "fit.pt"
    path.write_bytes(partial_checkpoint)
    return path


def test_a_checkpoint_records_a_checksum_over_sums_count_and_settings(checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    assert state["n_done"] == 4 and state["next_idx"] == 4
    rest = {key: value for key, value in state.items() if key != "hooklens_fit_sha256"}
    assert state["hooklens_fit_sha256"] == content_sha256(rest)


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(n_done=0),
        lambda s: s.update(n_done=1),
        lambda s: s["jacobian_sum"][0].mul_(3),
        lambda s: s.update(skip_first=3),
    ],
    ids=["n_done-0", "n_done-1", "sums", "a-setting"],
)
def test_resume_from_an_edited_checkpoint_is_refused_by_name(bridge, checkpoint, edit):
    _edit(checkpoint, edit)
    with pytest.raises(RunStateError, match="checksum") as info:
        _fit(bridge, checkpoint)
    assert str(checkpoint) in str(info.value) and "--overwrite" in str(info.value)


def test_resume_from_a_checkpoint_with_a_flipped_byte_is_refused_by_name(bridge, checkpoint):
    flip_in_zip_member(checkpoint, "data.pkl", offset=40)
    with pytest.raises(RunStateError) as info:
        _fit(bridge, checkpoint)
    assert str(checkpoint) in str(info.value)


def test_a_checkpoint_before_checksums_has_its_count_checked_against_the_prompts(
    bridge, checkpoint
):
    """hooklens before the checksum: resumed with a warning; its count is still checked
    against the prompts it records having gone through."""
    _edit(checkpoint, lambda s: s.pop("hooklens_fit_sha256") and s.update(n_done=0))
    with (
        pytest.warns(UserWarning, match="without checkpoint checksums"),
        pytest.raises(RunStateError, match="counts 0 prompts summed") as info,
    ):
        _fit(bridge, checkpoint)
    assert str(checkpoint) in str(info.value)


def test_a_checkpoint_before_checksums_still_resumes(bridge, checkpoint, tmp_path):
    _edit(checkpoint, lambda s: s.pop("hooklens_fit_sha256"))
    with pytest.warns(UserWarning, match="without checkpoint checksums"):
        resumed = _fit(bridge, checkpoint)
    whole = _fit(bridge, tmp_path / "whole.pt")
    assert resumed.n_prompts == whole.n_prompts == len(PROMPTS)
    for layer in whole.fitted_layers:
        torch.testing.assert_close(resumed.jacobian(layer), whole.jacobian(layer))


def test_loading_an_edited_checkpoint_as_a_lens_is_refused_by_name(bridge, checkpoint):
    assert JacobianLens.load(checkpoint, model=bridge).n_prompts == 4
    _edit(checkpoint, lambda s: s.update(n_done=1))
    with pytest.raises(LensFileError, match="checksum") as info:
        JacobianLens.load(checkpoint, model=bridge)
    assert str(checkpoint) in str(info.value)


def test_a_checkpoint_counting_more_prompts_than_it_went_through_is_refused(bridge, tmp_path):
    path = tmp_path / "reference.pt"
    sums = {0: torch.eye(D_MODEL), 1: torch.eye(D_MODEL)}
    state = {"jacobian_sum": sums, "n_done": 9, "next_idx": 4, "source_layers": [0, 1]}
    torch.save({**state, "skip_first": 2, "target_layer": N_LAYERS - 1}, path)
    with pytest.raises(LensFileError, match="more than the 4 prompts"):
        JacobianLens.load(path, model=bridge)
    with pytest.raises(RunStateError, match="more than the 4 prompts"):
        _fit(bridge, path)


# --- poor cases: bad entries, bad configs, bad arguments ----------------------------------


def _payload(**changes):
    payload = {"J": {0: torch.eye(D_MODEL)}, "n_prompts": 3, "d_model": D_MODEL, "metadata": {}}
    payload.update(changes)
    return payload


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (_payload(J={"first": torch.eye(D_MODEL)}), "'first'"),
        (_payload(J={0: "not a tensor"}), "J[0]"),
        (_payload(J={0: torch.eye(D_MODEL)[0]}), "square"),
        (_payload(J=[torch.eye(D_MODEL)]), "'J'"),
        (_payload(n_prompts="40"), "'n_prompts'"),
        (_payload(n_prompts=[40]), "'n_prompts'"),
        (_payload(n_prompts=-1), "'n_prompts'"),
        (_payload(metadata="fitted on wikipedia"), "'metadata'"),
        (_payload(d_model="32"), "'d_model'"),
        (_payload(target_layer="last"), "target_layer"),
    ],
    ids=[
        "layer-name",
        "matrix-type",
        "matrix-shape",
        "J-list",
        "n_prompts-str",
        "n_prompts-list",
        "n_prompts-negative",
        "metadata-str",
        "d_model-str",
        "target_layer-str",
    ],
)
def test_entries_of_the_wrong_type_are_refused_by_file_and_key(bridge, tmp_path, payload, key):
    path = tmp_path / "jlens.pt"
    torch.save(payload, path)
    with pytest.raises(LensFileError) as info:
        JacobianLens.load(path, model=bridge)
    assert str(path) in str(info.value) and key in str(info.value)


def _edit_config(directory: Path, edit) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.pop("config_sha256", None)  # as a config of hooklens before that hash
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c.pop("fingerprint"), "'fingerprint'"),
        (lambda c: c["fingerprint"].pop("n_layers"), "'fingerprint.n_layers'"),
        (lambda c: c["fingerprint"].update(d_model="32"), "'fingerprint.d_model'"),
        (lambda c: c.update(fingerprint="tiny-llama"), "fingerprint"),
        (lambda c: c.update(n_prompts="7"), "'n_prompts'"),
        (lambda c: c.update(metadata="words"), "'metadata'"),
        (lambda c: c.update(num_hidden_layers=N_LAYERS + 1), "'num_hidden_layers'"),
        (lambda c: c.update(component="resid_mid"), "'component'"),
        (lambda c: c.update(source_layers=[0]), "'source_layers'"),
    ],
    ids=[
        "no-fingerprint",
        "partial-fingerprint",
        "fingerprint-entry-type",
        "fingerprint-str",
        "n_prompts-str",
        "metadata-str",
        "layers-contradict-fingerprint",
        "component",
        "source_layers",
    ],
)
def test_a_directory_config_with_a_bad_key_is_refused_by_file_and_key(bridge, tmp_path, edit, key):
    _lens(bridge).save(tmp_path / "jlens")
    _edit_config(tmp_path / "jlens", edit)
    with pytest.raises(LensFileError) as info:
        JacobianLens.load(tmp_path / "jlens", model=bridge)
    assert "config.json" in str(info.value) and key in str(info.value)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.int8,
        torch.bool,
        torch.complex64,
        pytest.param("float16", marks=pytest.mark.outside_annotations),
    ],
)
def test_save_refuses_a_dtype_that_cannot_hold_the_matrices(bridge, tmp_path, dtype):
    with pytest.raises((InputError, InputTypeError), match="dtype"):
        _lens(bridge).save(tmp_path / "jlens.pt", dtype=dtype)
    assert not (tmp_path / "jlens.pt").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_save_takes_every_float_dtype(bridge, tmp_path, dtype):
    _lens(bridge).save(tmp_path / "jlens.pt", dtype=dtype)
    expected = _lens(bridge).jacobian(1).to(dtype).float()
    assert torch.equal(JacobianLens.load(tmp_path / "jlens.pt", model=bridge).jacobian(1), expected)


def test_fit_refuses_a_negative_skip_first_positions(bridge):
    with pytest.raises(InputError, match=r"skip_first_positions must be 0 or more.*got -1"):
        JacobianLens.fit(bridge, PROMPTS, max_seq_len=16, skip_first_positions=-1, progress=False)


def test_fit_refuses_a_single_string_of_prompts(bridge):
    with pytest.raises(InputTypeError, match=r"pass \[text\]"):
        JacobianLens.fit(bridge, PROMPTS[0], max_seq_len=16, skip_first_positions=2, progress=False)


def test_fit_refuses_prompts_longer_than_the_context(bridge):
    n_ctx = bridge.cfg.n_ctx
    long_ids = [torch.arange(4, 4 + n_ctx + 8) % VOCAB]
    with pytest.raises(InputError, match=rf"prompts\[0\] is {n_ctx + 8} tokens.*n_ctx={n_ctx}"):
        JacobianLens.fit(bridge, long_ids, max_seq_len=n_ctx + 8, skip_first_positions=2)
    fitted = JacobianLens.fit(  # cut to the context by max_seq_len: fitted
        bridge, long_ids, max_seq_len=n_ctx, skip_first_positions=2, progress=False
    )
    assert fitted.n_prompts == 1


@pytest.mark.parametrize(("max_seq_len", "skip"), [(16, 100), (1, 0), (16, 15)])
def test_fit_refuses_lengths_that_leave_no_position(bridge, tmp_path, max_seq_len, skip):
    with pytest.raises(
        InputError, match=f"must be at least skip_first_positions \\+ 2 = {skip + 2}"
    ):
        JacobianLens.fit(
            bridge,
            PROMPTS,
            max_seq_len=max_seq_len,
            skip_first_positions=skip,
            checkpoint=tmp_path / "fit.pt",
            progress=False,
        )
    assert not (tmp_path / "fit.pt").exists()


def test_a_fit_that_sums_nothing_leaves_no_checkpoint(bridge, tmp_path):
    """Prompts all too short to fit on: refused, and nothing left for the retry to refuse."""
    with pytest.raises(InputError, match="nothing was fitted"):
        _fit(bridge, tmp_path / "fit.pt", prompts=["w4 w5", "w6"])
    assert not (tmp_path / "fit.pt").exists()


# --- hooklens fit-jlens: refused from the arguments alone, --overwrite -------------------------


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    return path


@pytest.fixture
def loads(bridge, monkeypatch):
    """The model loads counted: a refusal from the arguments alone loads none."""
    from hooklens import models

    calls = []
    monkeypatch.setattr(models, "load", lambda name, **kwargs: calls.append(name) or bridge)
    return calls


def _fit_jlens(corpus, output, *flags):
    from hooklens.cli import main

    arguments = ["fit-jlens", "--data", str(corpus), "--output", str(output), "--prompts", "4"]
    return main([*arguments, "--no-progress", "--checkpoint-every", "1", *flags])


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--skip-first", "100", "--max-seq-len", "16"], "--max-seq-len must be at least"),
        (["--max-seq-len", "1"], "--skip-first=16 leaves no position"),
        (["--skip-first", "-1"], "--skip-first must be 0 or more"),
        (["--resume", "--overwrite"], "pick one"),
    ],
    ids=["skip-first-100", "max-seq-len-1", "skip-first-negative", "resume-and-overwrite"],
)
def test_fit_jlens_refuses_bad_arguments_before_the_model_loads(
    corpus, loads, tmp_path, capsys, flags, expected
):
    output = tmp_path / "jlens.pt"
    assert _fit_jlens(corpus, output, *flags) == 2
    assert expected in capsys.readouterr().err
    assert loads == [] and list(tmp_path.iterdir()) == [corpus]
    # the corrected command is not blocked by anything the refused one left
    assert _fit_jlens(corpus, output, "--max-seq-len", "16", "--skip-first", "2") == 0


def test_fit_jlens_overwrite_replaces_an_existing_lens_and_checkpoint(
    bridge, corpus, loads, tmp_path, capsys
):
    output = tmp_path / "jlens.pt"
    checkpoint = jacobian_fit.checkpoint_path(output)
    assert _fit_jlens(corpus, output, "--max-seq-len", "16", "--skip-first", "2") == 0
    checkpoint.write_bytes(b"the checkpoint of another fit")
    capsys.readouterr()
    assert _fit_jlens(corpus, output, "--max-seq-len", "12", "--skip-first", "2") == 2
    assert "--overwrite to start over" in capsys.readouterr().err
    assert JacobianLens.load(output, model=bridge).metadata["max_seq_len"] == 16
    flags = ["--max-seq-len", "12", "--skip-first", "2", "--overwrite"]
    assert _fit_jlens(corpus, output, *flags) == 0
    assert JacobianLens.load(output, model=bridge).metadata["max_seq_len"] == 12
    assert not checkpoint.exists()


def test_fit_jlens_resume_from_a_checkpoint_whose_count_was_zeroed_is_refused(
    bridge, corpus, loads, tmp_path, capsys, monkeypatch
):
    """The issue's case: n_done set to 0 by load-edit-save resumed to n_prompts=13 and a J
    3-10x too large; now the command stops, naming the checkpoint and the way out."""
    real, calls = jacobian_fit.prompt_jacobians, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    output = tmp_path / "jlens.pt"
    checkpoint = jacobian_fit.checkpoint_path(output)
    flags = ["--max-seq-len", "16", "--skip-first", "2"]
    monkeypatch.setattr(jacobian_fit, "prompt_jacobians", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        _fit_jlens(corpus, output, *flags)
    monkeypatch.setattr(jacobian_fit, "prompt_jacobians", real)
    _edit(checkpoint, lambda state: state.update(n_done=0))
    capsys.readouterr()
    assert _fit_jlens(corpus, output, *flags, "--resume") == 2
    error = capsys.readouterr().err
    assert str(checkpoint) in error and "--overwrite" in error and not output.exists()
    assert _fit_jlens(corpus, output, *flags, "--overwrite") == 0
    assert JacobianLens.load(output, model=bridge).n_prompts == 4
