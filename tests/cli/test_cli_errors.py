"""Bad input to `hooklens report` and `hooklens eval` ends in one line and exit 2.

Never a traceback, never a silent cut; a genuine bug still shows its traceback.
"""

from __future__ import annotations

import json
import types
import warnings

import pytest

from hooklens import TunedLens, models
from hooklens.cli import build_parser, main
from hooklens.errors import InputError, UnknownModelError
from hooklens.report import TextCutWarning, trajectory_report
from tests.conftest import make_bridge

WORDS = " ".join(f"w{i}" for i in (5, 17, 33, 5, 60, 71, 17, 9, 88, 42))
TEXT_OF_20_WORDS = " ".join(f"w{4 + i}" for i in range(20))
LONG_TEXT = " ".join(f"w{4 + i % 90}" for i in range(800))  # about 3,000 characters


@pytest.fixture(scope="module")
def lens_dir(model, tmp_path_factory):
    """A lens trained (well, saved) for the tiny unprocessed llama bridge."""
    directory = tmp_path_factory.mktemp("lens") / "lens"
    TunedLens.from_model(model).save(directory)
    return directory


@pytest.fixture
def loads(monkeypatch, model):
    """`models.load` returns the tiny bridge; the names it was asked for are recorded."""
    asked = []

    def load(name, **kwargs):
        asked.append(name)
        return model

    monkeypatch.setattr(models, "load", load)
    return asked


@pytest.fixture
def must_not_load(monkeypatch):
    def load(name, **kwargs):
        raise AssertionError("the model loaded before the arguments were checked")

    monkeypatch.setattr(models, "load", load)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "texts.jsonl"
    rows = [" ".join(f"w{4 + (i * 7 + j) % 90}" for j in range(40)) for i in range(60)]
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    return path


def one_line_error(capsys) -> str:
    """The command's stderr, which must be one line and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


# --- report ---------------------------------------------------------------------------


def test_report_refuses_max_tokens_below_one_before_loading(capsys, must_not_load, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", "--text", WORDS, "--max-tokens", "-1", "--output", str(out)]) == 2
    assert "--max-tokens must be at least 1, got -1" in one_line_error(capsys)
    assert not out.exists()


def test_report_says_what_it_cut_on_stderr_and_in_the_report(capsys, loads, model, tmp_path):
    out = tmp_path / "r.html"
    n_tokens = model.to_tokens(TEXT_OF_20_WORDS, truncate=False).shape[-1]
    arguments = ["report", "--text", TEXT_OF_20_WORDS, "--max-tokens", "8"]
    assert main([*arguments, "--output", str(out)]) == 0
    notice = f"read the first 8 of {n_tokens} tokens"
    assert one_line_error(capsys).strip() == f"{notice}; pass --max-tokens {n_tokens} to read all"
    assert notice in out.read_text()


def test_report_cut_at_the_context_length_says_so(capsys, loads, model, tmp_path):
    """The tiny model reads 64 positions; TransformerLens would cut the rest silently."""
    out = tmp_path / "r.html"
    n_tokens = model.to_tokens(LONG_TEXT, truncate=False).shape[-1]
    assert main(["report", "--text", LONG_TEXT, "--max-tokens", "100", "--output", str(out)]) == 0
    notice = f"read the first 64 of {n_tokens} tokens, as many as the model's context holds"
    assert one_line_error(capsys).strip() == notice
    assert notice.replace("'", "&#x27;") in out.read_text()


def test_report_api_warns_when_it_cuts_and_refuses_max_tokens_below_one(model, tmp_path):
    n = model.to_tokens(WORDS).shape[-1]
    with pytest.warns(
        TextCutWarning, match=rf"read the first 5 of {n} tokens; pass max_tokens={n} "
    ):
        trajectory_report(model, WORDS, path=tmp_path / "r.html", max_tokens=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TextCutWarning)  # the whole text: no warning
        trajectory_report(model, WORDS, path=tmp_path / "r.html", max_tokens=n)
    with pytest.warns(TextCutWarning, match=r"pass max_tokens=64 to read as many as the model's"):
        trajectory_report(model, LONG_TEXT, path=tmp_path / "r.html", max_tokens=8)
    with pytest.raises(InputError, match="max_tokens must be at least 1, got 0"):
        trajectory_report(model, WORDS, path=tmp_path / "r.html", max_tokens=0)


def test_report_refuses_an_output_directory_before_loading(capsys, must_not_load, tmp_path):
    assert main(["report", "--text", WORDS, "--output", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert (
        f"--output {tmp_path} is a directory; give a file name like {tmp_path}/report.html" in err
    )


def test_report_refuses_a_missing_text_file(capsys, must_not_load, tmp_path):
    missing = tmp_path / "nowhere.txt"
    assert main(["report", "--text-file", str(missing)]) == 2
    assert f"--text-file {missing}: No such file or directory" in one_line_error(capsys)


def test_report_refuses_an_empty_text_file(capsys, must_not_load, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert main(["report", "--text-file", str(empty)]) == 2
    assert "give some text with --text or --text-file" in one_line_error(capsys)


def test_report_lens_for_another_model_names_the_model_to_pass(
    capsys, monkeypatch, lens_dir, word_tokenizer, tmp_path
):
    other = make_bridge(word_tokenizer, "gpt2")
    monkeypatch.setattr(models, "load", lambda name, **kw: other)
    out = str(tmp_path / "r.html")
    assert main(["report", "--text", WORDS, "--lens", str(lens_dir), "--output", out]) == 2
    err = one_line_error(capsys)
    assert f"{lens_dir}: this lens was trained for 'tiny-llama'" in err
    assert err.rstrip().endswith("pass --model tiny-llama")
    assert "hooklens train" not in err and "strict=False" not in err


def test_report_lens_for_unprocessed_weights_says_no_processing(
    capsys, monkeypatch, lens_dir, word_tokenizer, tmp_path
):
    processed = make_bridge(word_tokenizer, "llama", processing=True)
    monkeypatch.setattr(models, "load", lambda name, **kw: processed)
    out = str(tmp_path / "r.html")
    assert main(["report", "--text", WORDS, "--lens", str(lens_dir), "--output", out]) == 2
    err = one_line_error(capsys)
    assert "trained on unprocessed weights" in err
    assert err.rstrip().endswith("pass --no-processing")


def test_the_lens_registry_words_the_same_mismatches_for_a_python_caller(
    lens_dir, word_tokenizer, model, tmp_path
):
    """The command line's advice names flags; `registry.load_lens` names the same fix
    for code that loads models itself, and finds the lens type from the file alone."""
    import torch

    from hooklens import JacobianLens
    from hooklens.errors import LensMismatchError
    from hooklens.lenses import registry

    jacobian = tmp_path / "jlens.pt"
    identity = {layer: torch.eye(model.cfg.d_model) for layer in range(model.cfg.n_layers - 1)}
    JacobianLens.from_model(model, identity).save(jacobian)
    assert registry.lens_file_type(lens_dir) is registry.TUNED_LENS
    assert registry.lens_file_type(jacobian) is registry.JACOBIAN_LENS
    assert registry.lens_file_type("gpt2-small") is registry.JACOBIAN_LENS  # a published name
    with pytest.raises(LensMismatchError) as other:
        registry.load_lens(str(lens_dir), make_bridge(word_tokenizer, "gpt2"))
    assert str(other.value) == (
        f"{lens_dir}: this lens was trained for 'tiny-llama', the model is 'tiny-gpt2'; "
        "load 'tiny-llama' (hooklens.models.load)"
    )
    processed = make_bridge(word_tokenizer, "llama", processing=True)
    with pytest.raises(LensMismatchError) as raw:
        registry.load_lens(str(jacobian), processed)
    assert str(raw.value).endswith(
        "a Jacobian lens reads raw activations, and the model was loaded with "
        "TransformerLens's weight processing; load the model with processing=False "
        "(hooklens.models.load)"
    )
    assert isinstance(registry.load_lens(str(jacobian), model), JacobianLens)


# --- model names ----------------------------------------------------------------------


def test_unknown_model_offline_on_a_bridge_is_one_line_with_close_names(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arguments = ["report", "--text", WORDS, "--model", "smolm2-135m", "--model-class", "bridge"]
    assert main(arguments) == 2
    err = one_line_error(capsys)
    assert "could not load 'smolm2-135m': not an embedded model (smollm2-135m)" in err
    assert "the Hugging Face hub is unreachable" in err
    assert "did you mean 'smollm2-135m'" in err
    assert len(err) < 400  # not TransformerLens's list of every name


def test_unknown_model_for_hooked_transformer_suggests_close_names(capsys):
    from tests.conftest import skip_without_hooked_transformer

    skip_without_hooked_transformer()
    assert main(["report", "--text", WORDS, "--model", "gtp2", "--model-class", "hooked"]) == 2
    err = one_line_error(capsys)
    assert "could not load 'gtp2'" in err and "did you mean 'gpt2'" in err
    assert len(err) < 400


def test_a_known_model_that_cannot_be_downloaded_offline_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["report", "--text", WORDS, "--model", "gpt2", "--model-class", "bridge"]) == 2
    err = one_line_error(capsys)
    assert "could not load 'gpt2': it is not in the local Hugging Face cache" in err


def test_a_name_the_hub_does_not_have_is_an_unknown_model(monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    def boot(name, *args, **kwargs):
        response = types.SimpleNamespace(headers={}, request=None)
        try:
            raise RepositoryNotFoundError("404 Client Error", response=response)
        except RepositoryNotFoundError as error:
            raise OSError(f"{name} is not a valid model identifier\nmore text") from error

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(models, "_bridge", boot)
    with pytest.raises(UnknownModelError, match="hub has no model of that name; did you mean"):
        models.load("EleutherAI/pythia-14", model_class="bridge")


def test_other_hub_failures_keep_the_loaders_error(monkeypatch):
    def boot(name, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(models, "_bridge", boot)
    with pytest.raises(OSError, match="No space left") as caught:
        models.load("EleutherAI/pythia-14m", model_class="bridge")
    assert not isinstance(caught.value, UnknownModelError)


def test_a_genuine_bug_keeps_its_traceback(monkeypatch):
    def load(name, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(models, "load", load)
    with pytest.raises(RuntimeError, match="shapes"):
        main(["report", "--text", WORDS])


# --- eval -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "minimum"),
    [
        ("--tokens", "0", 1),
        ("--seq-len", "1", 2),
        ("--batch-size", "0", 1),
        ("--transfer-tokens", "-1", 0),
    ],
)
def test_eval_refuses_bad_sizes_before_loading(capsys, must_not_load, corpus, flag, value, minimum):
    assert main(["eval", "--data", str(corpus), flag, value]) == 2
    assert f"{flag} must be at least {minimum}, got {value}" in one_line_error(capsys)


def test_eval_checks_the_data_before_loading(capsys, must_not_load, tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    assert main(["eval", "--data", str(missing)]) == 2
    assert str(missing) in one_line_error(capsys)
    table = tmp_path / "notes.csv"
    table.write_text("text\nhello\n")
    assert main(["eval", "--data", str(table)]) == 2
    assert ".csv files are not supported" in one_line_error(capsys)
    fieldless = tmp_path / "rows.jsonl"
    fieldless.write_text(json.dumps({"body": "hello"}) + "\n")
    assert main(["eval", "--data", str(fieldless)]) == 2
    assert "text" in one_line_error(capsys)


def test_eval_refuses_an_output_directory_before_loading(capsys, must_not_load, corpus, tmp_path):
    assert main(["eval", "--data", str(corpus), "--output", str(tmp_path)]) == 2
    assert f"--output {tmp_path} is a directory" in one_line_error(capsys)


def test_eval_lens_for_another_model_names_the_model_to_pass(
    capsys, monkeypatch, lens_dir, corpus, word_tokenizer, tmp_path
):
    other = make_bridge(word_tokenizer, "gpt2")
    monkeypatch.setattr(models, "load", lambda name, **kw: other)
    out = str(tmp_path / "e.json")
    arguments = ["eval", "--data", str(corpus), "--lens", str(lens_dir), "--output", out]
    assert main(arguments) == 2
    err = one_line_error(capsys)
    assert err.rstrip().endswith("pass --model tiny-llama")
    assert "hooklens train" not in err and "strict=False" not in err


def test_eval_runs_and_says_when_the_held_out_text_is_too_short(
    capsys, loads, lens_dir, corpus, tmp_path
):
    out = tmp_path / "e.json"
    arguments = ["eval", "--data", str(corpus), "--lens", str(lens_dir), "--output", str(out)]
    assert main([*arguments, "--seq-len", "16", "--tokens", "64"]) == 0
    assert json.loads(out.read_text())["tokens"] > 0
    capsys.readouterr()
    assert main([*arguments, "--seq-len", "4096"]) == 2
    assert "fewer than one chunk of seq_len=4096" in one_line_error(capsys)


# --- help -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["report", "eval"])
def test_help_explains_every_argument_with_its_default(command, capsys):
    subcommands = next(
        action for action in build_parser()._actions if action.dest == "command"
    ).choices
    parser = subcommands[command]
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        if action.default not in (None, [], False, "==SUPPRESS=="):
            assert f"(default: {action.default})" in text, action.option_strings
        for choice in action.choices or ():
            assert choice in text


def test_cut_notice_does_not_warn_twice_on_the_command_line(capsys, loads, tmp_path):
    """The API's TextCutWarning is said once, in flag terms, not also as a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["report", "--text", LONG_TEXT, "--output", str(tmp_path / "r.html")]) == 0
    assert "TextCutWarning" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "eval"])
def test_a_missing_lens_is_said_before_the_model_loads(capsys, must_not_load, corpus, command):
    arguments = ["--text", WORDS] if command == "report" else ["--data", str(corpus)]
    assert main([command, *arguments, "--lens", str(corpus.parent / "no-lens")]) == 2
    assert "no lens at" in one_line_error(capsys)


# --- devices ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "fit-jlens"])
@pytest.mark.parametrize("device", ["cuda:7", "gpu"])
def test_a_device_this_machine_lacks_is_refused_before_loading(
    command, device, capsys, must_not_load, corpus, tmp_path
):
    """`--device cuda:7` without that GPU, or a name torch does not know, is one line
    and exit 2 before the model loads, and nothing is written."""
    output = tmp_path / ("run" if command == "train" else "jlens.pt")
    arguments = [command, "--data", str(corpus), "--output", str(output), "--device", device]
    assert main(arguments) == 2
    assert f"--device {device} is not a device this machine has" in one_line_error(capsys)
    assert not output.exists() and list(tmp_path.iterdir()) == [corpus]


def test_fit_jlens_loads_the_model_onto_device(capsys, monkeypatch, model, corpus, tmp_path):
    asked = []

    def load(name, **kwargs):
        asked.append(kwargs)
        return model

    monkeypatch.setattr(models, "load", load)
    output = tmp_path / "jlens.pt"
    arguments = ["fit-jlens", "--data", str(corpus), "--output", str(output), "--device", "cpu"]
    assert main([*arguments, "--prompts", "2", "--max-seq-len", "8", "--skip-first", "1"]) == 0
    assert [kwargs["device"] for kwargs in asked] == ["cpu"]
    assert [kwargs["processing"] for kwargs in asked] == [False]
    assert output.is_file()


@pytest.mark.parametrize("command", ["eval", "report"])
def test_a_jacobian_lens_beside_a_processed_tuned_lens_is_refused_before_loading(
    command, capsys, must_not_load, model, corpus, word_tokenizer, tmp_path
):
    """Each would be refused with the other's flag (--processing / --no-processing):
    say once, before the model loads, that no one load reads both, and what to do."""
    from hooklens import JacobianLens

    processed = tmp_path / "processed-lens"
    TunedLens.from_model(make_bridge(word_tokenizer, "llama", processing=True)).save(processed)
    jacobian = tmp_path / "jlens.pt"
    JacobianLens.from_model(model).save(jacobian)
    lenses = ["--lens", str(processed), "--lens", str(jacobian)]
    extra = ["--data", str(corpus)] if command == "eval" else ["--text", WORDS]
    output = tmp_path / ("eval.json" if command == "eval" else "report.html")
    assert main([command, *lenses, *extra, "--output", str(output)]) == 2
    error = one_line_error(capsys)
    assert "no one model load reads both" in error and "--model-class bridge" in error
    assert not output.exists()
    # the raw tuned lens beside the same Jacobian lens is fine (checked, not refused)
    raw = tmp_path / "raw-lens"
    TunedLens.from_model(model).save(raw)
    from hooklens.cli.options import check_lens_paths

    check_lens_paths([str(raw), str(jacobian)])
