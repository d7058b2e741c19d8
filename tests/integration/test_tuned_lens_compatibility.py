"""Code ported from tuned-lens by changing its imports keeps working.

`chunk_and_tokenize` packs a dataset as tuned-lens's does; `map_location` reaches the
parameter reader; a lens that is not found is a `ValueError` as it was there; and a
revision that is not cached (offline) or does not exist (online) says which ones do.
The hub is imitated as in tests/artifacts/test_hub.py: a folder laid out like the tuned-lens
space, placed in a huggingface_hub cache, and the hub client stood in for online.
"""

from __future__ import annotations

import copy
import math
import os
import types

import numpy as np
import pytest
import torch
from huggingface_hub import constants

from hooklens import TunedLens, Unembed
from hooklens.artifacts import (
    HubUnreachableError,
    LensNotFoundError,
    available_lens_artifacts,
    load_artifacts,
)
from hooklens.core import ModelAdapter
from hooklens.errors import DataError, HooklensError, InputError, InputTypeError
from hooklens.models import hub_model_name
from hooklens.training.data import chunk_and_tokenize
from tests.artifacts.test_hub import COMMIT, hub_layout, install_in_cache, same_parameters
from tests.artifacts.test_save_load import _trained
from tests.conftest import VOCAB, skip_without_hooked_transformer

REPO_ID = "AlignmentResearch/tuned-lens"
EOS = "w1"  # the word tokenizer's EOS token (id 1)
TINY_LLAMA = "tiny-llama"  # the lens name of the bridge (its model name)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """huggingface_hub in offline mode, whatever the environment says."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("TUNED_LENS_REPO_ID", raising=False)
    monkeypatch.delenv("TUNED_LENS_REPO_TYPE", raising=False)


def _texts(n: int, seed: int = 0) -> list[str]:
    """`n` texts of 0 to 24 words of the word tokenizer (ids 4..VOCAB-1), one unknown."""
    rng = np.random.default_rng(seed)
    texts = [
        " ".join(f"w{i}" for i in rng.integers(4, VOCAB, rng.integers(0, 25))) for _ in range(n)
    ]
    texts[3] = "naïve w7"  # an unknown word (the unk id 0) of non-ASCII bytes
    return texts


def _token_stream(texts: list[str], tokenizer) -> list[int]:
    """The stream tuned-lens cuts into rows: each text's tokens after an EOS."""
    stream: list[int] = []
    for text in texts:
        stream += [tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    return stream


def _dataset(texts, **columns):
    from datasets import Dataset

    return Dataset.from_dict({"text": texts, **columns})


# --- chunk_and_tokenize --------------------------------------------------------------------


def test_rows_are_the_eos_separated_texts_cut_in_order_across_map_batches(word_tokenizer):
    texts = _texts(2600)  # three of map's batches of 1000 texts: rows cross their edges
    rows, _ = chunk_and_tokenize(_dataset(texts), word_tokenizer, max_seq_len=37)
    stream = _token_stream(texts, word_tokenizer)
    n_rows = len(stream) // 37
    assert rows.column_names == ["input_ids"] and len(rows) == n_rows
    expected = torch.tensor(stream[: n_rows * 37]).reshape(n_rows, 37)
    assert torch.equal(rows[:]["input_ids"], expected)
    assert rows[0]["input_ids"][0] == word_tokenizer.eos_token_id  # the first row opens with EOS


def test_final_shorter_row_is_kept_only_when_asked(word_tokenizer):
    texts = _texts(40, seed=1)
    stream = _token_stream(texts, word_tokenizer)
    assert len(stream) % 50  # a remainder exists
    rows, _ = chunk_and_tokenize(
        _dataset(texts), word_tokenizer, max_seq_len=50, return_final_batch=True, format="numpy"
    )
    assert len(rows) == len(stream) // 50 + 1
    assert [int(t) for t in rows[-1]["input_ids"]] == stream[len(stream) // 50 * 50 :]
    assert all(len(row) == 50 for row in rows[:-1]["input_ids"])


def test_nats_to_bits_per_byte_counts_tokens_and_bytes_as_tuned_lens(word_tokenizer):
    texts = _texts(300, seed=2)
    _, nats_to_bpb = chunk_and_tokenize(_dataset(texts), word_tokenizer, max_seq_len=64)
    # tuned-lens tokenizes "".join(EOS + text ...) and counts all its tokens and bytes,
    # the dropped tail included.
    joined = "".join(EOS + text for text in texts)
    n_tokens = len(_token_stream(texts, word_tokenizer))
    expected = (np.float64(n_tokens) / len(joined.encode("utf-8"))) / np.log(np.float64(2))
    assert "ï" in joined and len(joined.encode("utf-8")) > len(joined)
    assert nats_to_bpb == pytest.approx(float(expected), rel=1e-12)


def test_a_transformer_lens_models_tokenizer_adds_no_bos_to_the_rows(word_tokenizer, model_zoo):
    skip_without_hooked_transformer()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    config = HookedTransformerConfig(
        n_layers=1, d_model=8, d_head=4, n_heads=2, d_vocab=VOCAB, n_ctx=64, act_fn="relu"
    )
    hooked = HookedTransformer(config, tokenizer=word_tokenizer)
    texts = _dataset(_texts(200, seed=3))
    expected, expected_ratio = chunk_and_tokenize(texts, word_tokenizer, max_seq_len=32)
    for tokenizer in (hooked.tokenizer, hooked, model_zoo["bridge-llama"].tokenizer):
        rows, ratio = chunk_and_tokenize(texts, tokenizer, max_seq_len=32)
        assert (
            torch.equal(rows[:]["input_ids"], expected[:]["input_ids"]) and ratio == expected_ratio
        )


def test_splits_are_packed_apart_and_the_ratio_is_over_all_of_them(word_tokenizer):
    from datasets import DatasetDict

    train, test = _texts(120, seed=4), _texts(60, seed=5)
    splits = DatasetDict({"train": _dataset(train), "test": _dataset(test)})
    rows, ratio = chunk_and_tokenize(splits, word_tokenizer, max_seq_len=16)
    for name, texts in (("train", train), ("test", test)):
        stream = _token_stream(texts, word_tokenizer)
        assert rows[name][:]["input_ids"].flatten().tolist() == stream[: len(stream) // 16 * 16]
    tokens = len(_token_stream(train + test, word_tokenizer))
    n_bytes = len("".join(EOS + text for text in train + test).encode("utf-8"))
    assert ratio == pytest.approx(tokens / n_bytes / math.log(2), rel=1e-12)


def test_a_dataset_on_disk_is_packed_in_processes_into_cached_rows(word_tokenizer, tmp_path):
    from datasets import load_from_disk

    texts = _texts(500, seed=6)
    _dataset(texts).save_to_disk(tmp_path / "texts")
    on_disk = load_from_disk(str(tmp_path / "texts"))
    rows, ratio = chunk_and_tokenize(on_disk, word_tokenizer, max_seq_len=40, num_proc=2)
    in_memory, expected_ratio = chunk_and_tokenize(_dataset(texts), word_tokenizer, max_seq_len=40)
    assert torch.equal(rows[:]["input_ids"], in_memory[:]["input_ids"]) and ratio == expected_ratio
    assert rows.cache_files  # the rows are cache files beside the dataset, not in memory
    written = {f["filename"]: os.stat(f["filename"]).st_mtime_ns for f in rows.cache_files}
    again, _ = chunk_and_tokenize(on_disk, word_tokenizer, max_seq_len=40, num_proc=2)
    assert {f["filename"]: os.stat(f["filename"]).st_mtime_ns for f in again.cache_files} == written
    longer, _ = chunk_and_tokenize(on_disk, word_tokenizer, max_seq_len=41, num_proc=2)
    assert longer[:]["input_ids"].shape[1] == 41  # another row length is not read from the cache


@pytest.mark.outside_annotations
def test_refusals_say_what_was_found(word_tokenizer):
    from datasets import Dataset

    with pytest.raises(DataError, match="has no rows"):
        chunk_and_tokenize(Dataset.from_dict({"text": []}), word_tokenizer)
    with pytest.raises(DataError, match=r"no column 'text' \(columns found: 'body', 'id'\)"):
        chunk_and_tokenize(Dataset.from_dict({"body": ["w4"], "id": [1]}), word_tokenizer)
    with pytest.raises(DataError, match=r"holds 6 tokens \(2 texts, an EOS before each\)"):
        chunk_and_tokenize(_dataset(["w4 w5", "w6 w7"]), word_tokenizer, max_seq_len=7)
    rows, _ = chunk_and_tokenize(
        _dataset(["w4 w5", "w6 w7"]), word_tokenizer, max_seq_len=7, return_final_batch=True
    )
    assert rows[:]["input_ids"].tolist() == [[1, 4, 5, 1, 6, 7]]
    with pytest.raises(DataError, match=r"row 1 of the dataset: column 'text' holds None"):
        chunk_and_tokenize(_dataset(["w4", None]), word_tokenizer, max_seq_len=1)
    with pytest.raises(InputError, match="at least 1 token"):
        chunk_and_tokenize(_dataset(["w4"]), word_tokenizer, max_seq_len=0)
    with pytest.raises(InputTypeError, match="an integer"):
        chunk_and_tokenize(_dataset(["w4"]), word_tokenizer, max_seq_len=2.5)
    short = copy.deepcopy(word_tokenizer)
    short.model_max_length = 24
    with pytest.raises(InputError, match=r"model_max_length=24.*max_seq_len=24 or less"):
        chunk_and_tokenize(_dataset(["w4"]), short, max_seq_len=25)
    with pytest.raises(InputTypeError, match="without streaming=True"):
        chunk_and_tokenize(_dataset(["w4"]).to_iterable_dataset(), word_tokenizer)
    with pytest.raises(InputTypeError, match="a Hugging Face tokenizer"):
        chunk_and_tokenize(_dataset(["w4"]), "gpt2")


# --- map_location --------------------------------------------------------------------------


@pytest.fixture(params=["hooked-rms-processed", "bridge-llama"])
def model(request, model_zoo):
    """A HookedTransformer (skipped on TransformerLens 4) and a TransformerBridge."""
    return model_zoo[request.param]


@pytest.fixture
def saved(model, tmp_path):
    """The same trained lens in our format and in tuned-lens's."""
    from tests.artifacts.test_save_load import _write_tuned_lens_artifact

    lens = _trained(model, seed=3)
    lens.save(tmp_path / "ours")
    _write_tuned_lens_artifact(tmp_path / "theirs", lens, prefixed=False)
    return lens, {"hooklens": tmp_path / "ours", "tuned-lens": tmp_path / "theirs"}


@pytest.mark.parametrize("location", ["cpu", torch.device("cpu")], ids=["str", "torch.device"])
@pytest.mark.parametrize("format", ["hooklens", "tuned-lens"])
def test_map_location_reaches_the_parameter_reader(model, saved, monkeypatch, location, format):
    import hooklens.artifacts.lens_dir as artifacts

    lens, folders = saved
    seen: list[object] = []
    real_load, real_load_file = torch.load, artifacts.load_file

    def torch_load(*args, **kwargs):
        seen.append(("torch.load", kwargs["map_location"], kwargs["weights_only"]))
        return real_load(*args, **kwargs)

    def load_file(*args, **kwargs):
        seen.append(("safetensors", kwargs["device"]))
        return real_load_file(*args, **kwargs)

    monkeypatch.setattr(torch, "load", torch_load)
    monkeypatch.setattr(artifacts, "load_file", load_file)
    expected = (
        ("safetensors", "cpu")
        if format == "hooklens"
        else ("torch.load", torch.device("cpu"), True)
    )
    for load in (
        lambda: TunedLens.load(folders[format], model, map_location=location),
        lambda: TunedLens.from_model_and_pretrained(
            model, str(folders[format]), map_location=location
        ),
        lambda: TunedLens.from_unembed_and_pretrained(
            Unembed.from_model(model), str(folders[format]), map_location=location
        ),
    ):
        loaded = load()
        assert seen == [expected]
        seen.clear()
        assert same_parameters(loaded, lens)
        assert {p.device for p in loaded.layer_translators.parameters()} == {torch.device("cpu")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_map_location_puts_the_translators_on_that_device(model, saved):
    lens, folders = saved
    on_gpu = copy.deepcopy(model).to("cuda")
    for folder in folders.values():
        to_cpu = TunedLens.load(folder, on_gpu, map_location="cpu")
        assert {p.device.type for p in to_cpu.layer_translators.parameters()} == {"cpu"}
        to_gpu = TunedLens.from_model_and_pretrained(
            model, str(folder), map_location=torch.device("cuda:0")
        )
        assert {p.device for p in to_gpu.layer_translators.parameters()} == {torch.device("cuda:0")}
        for read, saved_param in zip(to_gpu.parameters(), lens.parameters(), strict=True):
            assert torch.equal(read.cpu(), saved_param)


@pytest.mark.outside_annotations
def test_map_location_that_is_no_device_here_is_refused_before_reading(model, saved):
    _, folders = saved
    with pytest.raises(InputError, match="not a device this machine has"):
        TunedLens.load(folders["hooklens"], model, map_location="gpu")
    with pytest.raises(InputTypeError, match="a device name"):
        TunedLens.from_model_and_pretrained(
            model, str(folders["tuned-lens"]), map_location={"cuda:0": "cpu"}
        )
    with pytest.raises(TypeError, match="only map_location is taken"):
        TunedLens.from_model_and_pretrained(model, str(folders["tuned-lens"]), mmap=True)


# --- a lens not found is a ValueError, as in tuned-lens ------------------------------------


@pytest.fixture
def bridge(model_zoo):
    """A TransformerBridge: these paths do not depend on the model class."""
    model = model_zoo["bridge-llama"]
    assert hub_model_name(ModelAdapter(model)) == TINY_LLAMA
    return model


def _http_error(kind):
    response = types.SimpleNamespace(status_code=404, headers={}, request=None)
    return kind("404 Client Error", response=response)


@pytest.fixture
def hub_answers(monkeypatch):
    """Stand in for the online hub: `hf_hub_download` and `list_repo_files` raise `error`."""
    import huggingface_hub

    from hooklens.artifacts import _hf

    def answer(error):
        def fail(*args, **kwargs):
            raise error

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
        monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, *a, **k: fail())
        monkeypatch.setattr(_hf, "offline", lambda: False)

    return answer


def test_lens_not_found_is_still_a_file_not_found_and_hooklens_error():
    assert issubclass(LensNotFoundError, ValueError)
    assert issubclass(LensNotFoundError, FileNotFoundError)
    assert issubclass(LensNotFoundError, HooklensError)
    assert str(LensNotFoundError("no lens at x")) == "no lens at x"


def test_except_value_error_catches_a_missing_local_lens(bridge, tmp_path):
    repo = hub_layout(tmp_path / "repo", {TINY_LLAMA: _trained(bridge)})
    for missing in (
        lambda: TunedLens.load(tmp_path / "nowhere", bridge),
        lambda: TunedLens.from_model_and_pretrained(bridge, "gpt2", repo_id=str(repo)),
        lambda: load_artifacts("gpt2", repo_id=str(repo)),
    ):
        try:
            missing()
        except ValueError as error:  # what ported tuned-lens code catches
            assert isinstance(error, LensNotFoundError)
        else:
            pytest.fail("no error")


@pytest.mark.parametrize("kind", ["RepositoryNotFoundError", "RevisionNotFoundError"])
def test_except_value_error_catches_a_missing_hub_repository_or_revision(bridge, hub_answers, kind):
    import huggingface_hub.errors

    hub_answers(_http_error(getattr(huggingface_hub.errors, kind)))
    found = (
        "does not exist, or is private or gated"
        if kind.startswith("Repo")
        else ("has no branch, tag or commit 'no-such-revision'")
    )
    for call in (
        lambda: TunedLens.from_model_and_pretrained(bridge, revision="no-such-revision"),
        lambda: available_lens_artifacts(revision="no-such-revision"),
    ):
        with pytest.raises(ValueError, match=found) as info:
            call()
        assert isinstance(info.value, LensNotFoundError)
        assert f"space {REPO_ID!r} at revision 'no-such-revision'" in str(info.value)
        assert isinstance(info.value.__cause__, getattr(huggingface_hub.errors, kind))


def test_listing_wraps_an_entry_the_hub_does_not_find(hub_answers):
    from huggingface_hub.errors import RemoteEntryNotFoundError

    hub_answers(_http_error(RemoteEntryNotFoundError))
    with pytest.raises(ValueError, match=rf"space {REPO_ID!r}: the hub found nothing to list"):
        available_lens_artifacts()


def test_except_value_error_catches_a_lens_missing_from_the_cached_snapshot(bridge, tmp_path):
    cache = tmp_path / "hf-cache"
    install_in_cache(
        hub_layout(tmp_path / "repo", {TINY_LLAMA: _trained(bridge)}), cache, REPO_ID, "space"
    )
    with pytest.raises(ValueError, match=rf"'gpt2'.*Available: {TINY_LLAMA}"):
        TunedLens.from_model_and_pretrained(bridge, "gpt2", cache_dir=cache)


# --- a revision that is not cached says which ones are --------------------------------------


def test_offline_listing_of_an_uncached_revision_names_the_cached_ones(bridge, tmp_path):
    cache = tmp_path / "hf-cache"
    repo = hub_layout(tmp_path / "repo", {TINY_LLAMA: _trained(bridge)})
    install_in_cache(repo, cache, REPO_ID, "space")
    install_in_cache(repo, cache, REPO_ID, "space", ref="v0", commit="f" * 40)
    assert available_lens_artifacts(cache_dir=cache) == [TINY_LLAMA]
    assert available_lens_artifacts(cache_dir=cache, revision="v0") == [TINY_LLAMA]
    with pytest.raises(HubUnreachableError) as info:
        available_lens_artifacts(revision="no-such-revision", cache_dir=cache)
    message = str(info.value)
    assert "revision 'no-such-revision' of it is not in the huggingface_hub cache" in message
    assert "nothing of it" not in message
    assert f"holds 'main', 'v0'; commits {COMMIT[:12]}, {'f' * 12}" in message
    with pytest.raises(HubUnreachableError, match=r"'no-such-revision'.*holds 'main', 'v0'"):
        TunedLens.from_model_and_pretrained(bridge, cache_dir=cache, revision="no-such-revision")


def test_offline_listing_of_an_uncached_repository_says_nothing_is_cached(tmp_path):
    with pytest.raises(HubUnreachableError, match="nothing of it is in the huggingface_hub cache"):
        available_lens_artifacts("me/elsewhere", cache_dir=tmp_path / "hf-cache")
