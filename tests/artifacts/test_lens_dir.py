"""Lens directories: a save is all or nothing, and a bad file is refused by name.

Every file problem surfaces as `LensFileError` naming the file and the key (never a raw
safetensors, torch, json, KeyError or TypeError traceback); a lens that does not fit the
model as `LensMismatchError`, sizes included whatever `strict` says.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hooklens import LensFileError, LensMismatchError, OutputExistsError, TunedLens
from hooklens.artifacts import (
    STALE_AFTER_S,
    LensNotFoundError,
    StagedWrites,
    atomic_write,
    atomic_write_text,
    config_digest,
)
from hooklens.errors import OutputWriteError
from hooklens.models import has_hooked_transformer
from tests.artifacts.test_save_load import _trained, _write_tuned_lens_artifact
from tests.conftest import D_MODEL, N_LAYERS, VOCAB, make_hooked, skip_without_hooked_transformer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model(model_zoo):
    """A tiny model of either TransformerLens: file checks do not depend on its kind."""
    return model_zoo["hooked-rms-processed" if has_hooked_transformer() else "bridge-llama"]


@pytest.fixture
def saved(model, tmp_path):
    """A trained lens saved to `tmp_path / "lens"`."""
    _trained(model).save(tmp_path / "lens")
    return tmp_path / "lens"


def _same_parameters(a: TunedLens, b: TunedLens) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _rewrite_params(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the parameters and record their hash, as a consistent save would."""
    save_file(tensors, directory / "params.safetensors")
    config = json.loads((directory / "config.json").read_text())
    digest = hashlib.sha256((directory / "params.safetensors").read_bytes()).hexdigest()
    config["params_sha256"] = digest
    config["config_sha256"] = config_digest(config)
    (directory / "config.json").write_text(json.dumps(config))


def _edit_config(directory: Path, edit) -> None:
    """Edit the config and record its new SHA-256, as a tool that writes a consistent
    config would: what is left to check is the content (without the hash, any edit is
    refused as damage, `test_a_config_changed_after_saving_is_refused`)."""
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    if "config_sha256" in config:
        config["config_sha256"] = config_digest(config)
    (directory / "config.json").write_text(json.dumps(config))


# --- 4: strict=False relaxes the hash and processing checks, never the sizes ------------------


@pytest.mark.parametrize(
    "size",
    [
        dict(n_layers=N_LAYERS + 1),
        dict(n_layers=N_LAYERS - 1),
        dict(d_model=48, d_head=12),
        dict(d_vocab=VOCAB + 8),
    ],
    ids=["more-layers", "fewer-layers", "d_model", "d_vocab"],
)
def test_strict_false_still_refuses_a_lens_of_other_sizes(hooked, tmp_path, size):
    _trained(hooked).save(tmp_path)
    other = make_hooked("RMS", processing=True, **size)
    name = "n_layers" if "n_layers" in size else next(iter(size))
    for strict in (False, True):
        with pytest.raises(LensMismatchError, match=rf"{name}: lens has \d+, model has") as info:
            TunedLens.load(tmp_path, model=other, strict=strict)
        assert "never the sizes" in str(info.value)


def test_strict_false_still_relaxes_the_unembedding_check(hooked, tmp_path):
    _trained(hooked).save(tmp_path)
    other = make_hooked("RMS", processing=True, seed=1)  # same sizes, other weights
    with pytest.warns(UserWarning, match="unembedding"):
        lens = TunedLens.load(tmp_path, model=other, strict=False)
    assert lens.n_layers == N_LAYERS


# --- 9: a lens directory changes as a whole, or visibly not at all -----------------------------

_KILL_SCRIPT = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {repo!r})
from tests.conftest import make_hooked
from tests.artifacts.test_save_load import _trained

root = {root!r}
lens_a = _trained(make_hooked("RMS", processing=True, seed=0), seed=1)
lens_b = _trained(make_hooked("RMS", processing=True, seed=1), seed=2)
lens_a.save(os.path.join(root, "ref-a"))
lens_b.save(os.path.join(root, "ref-b"))

# Kill at the n-th file operation of lens_b.save (instead of making it): every point
# where a real kill can land between the writes of the two files.
calls = {{"n": 0}}
kill_at = {{"n": None}}
real = {{"replace": os.replace, "fsync": os.fsync}}

def deadly(name):
    def call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_at["n"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real[name](*args, **kwargs)
    return call

os.replace, os.fsync = deadly("replace"), deadly("fsync")
lens_b.save(os.path.join(root, "dry-run"))  # counts the operations of one save
operations = calls["n"]
results = {{}}
for n in range(1, operations + 1):
    target = os.path.join(root, f"killed-at-{{n}}")
    os.replace, os.fsync = real["replace"], real["fsync"]
    lens_a.save(target)
    os.replace, os.fsync = deadly("replace"), deadly("fsync")
    pid = os.fork()
    if pid == 0:
        calls["n"], kill_at["n"] = 0, n
        lens_b.save(target)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    results[n] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)
with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(results, f)
"""


def test_save_killed_at_any_point_leaves_the_old_lens_the_new_one_or_an_error(tmp_path):
    """Lens A (model MA) is replaced by lens B (model MB) and the process is SIGKILLed at
    each file operation of that save in turn. What is left must load as exactly A (on
    MA) or exactly B (on MB), or raise LensFileError: never B's parameters under A's
    config, which today loads on MA silently."""
    skip_without_hooked_transformer()
    script = _KILL_SCRIPT.format(repo=str(REPO), root=str(tmp_path))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=REPO)
    results = json.loads((tmp_path / "results.json").read_text())
    results = {int(n): code for n, code in results.items()}
    assert results and all(code == signal.SIGKILL for code in results.values()), results

    models = {"a": make_hooked("RMS", processing=True, seed=0)}
    models["b"] = make_hooked("RMS", processing=True, seed=1)
    refs = {k: TunedLens.load(tmp_path / f"ref-{k}", model=m) for k, m in models.items()}
    outcomes = {}
    for n in results:
        target, outcome = tmp_path / f"killed-at-{n}", []
        for key, model in models.items():
            try:
                lens = TunedLens.load(target, model=model)
            except LensMismatchError:
                continue  # a lens for the other model: refused, as it should be
            except LensFileError as error:
                assert "interrupted" in str(error) and "params.safetensors" in str(error)
                outcome.append("refused")
                break
            assert _same_parameters(lens, refs[key]), f"killed at {n}: a mix loaded on {key}"
            assert lens.config == refs[key].config
            outcome.append(key)
        assert len(outcome) == 1, f"killed at operation {n}: {outcome}"
        outcomes[n] = outcome[0]
    # The kill points cover the vulnerable window (refused) and both ends.
    assert outcomes[1] == "a" and "refused" in outcomes.values(), outcomes


def test_a_failed_save_leaves_the_previous_lens_and_no_temporary_files(model, saved, monkeypatch):
    before = TunedLens.load(saved, model=model)

    def disk_full(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("hooklens.artifacts.lens_dir.save_file", disk_full)
    # One line naming the real file (not its temporary), the cause, and what was kept.
    params = saved / "params.safetensors"
    kept = f"could not write {params}: the disk is full; the earlier params.safetensors is kept"
    with pytest.raises(OutputWriteError, match=re.escape(kept)) as failed:
        _trained(model, seed=5).save(saved)
    assert isinstance(failed.value, OSError) and failed.value.errno == 28
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "params.safetensors"]
    assert _same_parameters(TunedLens.load(saved, model=model), before)


def test_a_flipped_byte_in_the_parameters_is_refused(model, saved):
    data = bytearray((saved / "params.safetensors").read_bytes())
    data[-3] ^= 0x01  # in the last tensor's data: still a valid safetensors file
    (saved / "params.safetensors").write_bytes(bytes(data))
    load_file(saved / "params.safetensors")  # safetensors itself sees nothing wrong
    with pytest.raises(LensFileError, match=r"params\.safetensors does not match .*config\.json"):
        TunedLens.load(saved, model=model)


def test_config_records_the_sha256_of_the_parameters(model, saved):
    config = json.loads((saved / "config.json").read_text())
    digest = hashlib.sha256((saved / "params.safetensors").read_bytes()).hexdigest()
    assert config["params_sha256"] == digest
    assert TunedLens.load(saved, model=model).config.to_dict().keys() == config.keys() - {
        "params_sha256",
        "config_sha256",
        "provenance",  # the lens's, not its config's (`TunedLens.provenance`)
    }


def test_config_records_the_sha256_of_its_own_content(saved):
    config = json.loads((saved / "config.json").read_text())
    content = {k: v for k, v in config.items() if k != "config_sha256"}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    assert config["config_sha256"] == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    "old, new",
    [('"tiny-', '"tinY-'), ('"resid_pre"', '"resid_post"'), ('"d_model": 32', '"d_model": 33')],
    ids=["model-name", "component", "width"],
)
def test_a_config_changed_after_saving_is_refused_as_damaged(model, saved, old, new):
    """Without the config's own hash, these edits loaded as a lens for another model name
    or component, or were refused as a lens for another model: they are damage."""
    text = (saved / "config.json").read_text()
    assert old in text
    (saved / "config.json").write_text(text.replace(old, new, 1))
    with pytest.raises(LensFileError, match=r"config\.json was changed after it was saved"):
        TunedLens.load(saved, model=model)


@pytest.mark.parametrize("hashes", [["config_sha256"], ["config_sha256", "params_sha256"]])
def test_a_lens_saved_before_the_hashes_still_loads(model, saved, hashes):
    config = json.loads((saved / "config.json").read_text())
    for key in hashes:
        config.pop(key)
    (saved / "config.json").write_text(json.dumps(config))
    assert _same_parameters(TunedLens.load(saved, model=model), _trained(model))


def test_parameters_without_config_say_the_save_was_interrupted(model, saved):
    (saved / "config.json").unlink()
    with pytest.raises(LensFileError, match=r"params\.safetensors but no config\.json"):
        TunedLens.load(saved, model=model)


# --- 11: temporaries: umask, fsync, stale ones removed, fresh ones kept ------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_saved_files_honour_the_umask(model, tmp_path, umask):
    old = os.umask(umask)
    try:
        _trained(model).save(tmp_path)
        atomic_write_text(tmp_path / "note.txt", "hello\n")
    finally:
        os.umask(old)
    for name in ("config.json", "params.safetensors", "note.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_files_are_flushed_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else "?"
        events.append(("fsync", Path(path).name))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with StagedWrites() as staged:
        staged.stage(tmp_path / "a.bin", lambda tmp: Path(tmp).write_bytes(b"a"))
        staged.stage(tmp_path / "b.json", lambda tmp: Path(tmp).write_text("{}"))
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "fsync", "replace", "replace", "fsync"], events
    assert [name for kind, name in events if kind == "replace"] == ["a.bin", "b.json"]
    if os.path.exists("/proc/self/fd"):
        assert events[0][1].startswith(".a.bin.") and events[-1][1] == tmp_path.name


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_killed_writes_are_removed_and_fresh_ones_kept(tmp_path):
    target = tmp_path / "params.safetensors"
    old = time.time() - 2 * STALE_AFTER_S
    dead, alive = _dead_pid(), os.getpid()
    files = {
        f".params.safetensors.{dead}.0badc0de.tmp": (old, False),  # killed writer: removed
        ".params.safetensors.k3x9_q2a.tmp": (old, False),  # mkstemp name of old versions
        f".params.safetensors.{dead}.00112233.tmp": (time.time(), True),  # fresh: kept
        f".params.safetensors.{alive}.44556677.tmp": (old, True),  # writer still runs
        f".config.json.{dead}.8899aabb.tmp": (old, True),  # another target's
        ".params.safetensors.notours.tmp": (old, True),  # not our pattern
        "params.safetensors.tmp": (old, True),
    }
    for name, (mtime, _) in files.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert target.read_bytes() == b"new"
    left = {p.name for p in tmp_path.iterdir()} - {target.name}
    assert left == {name for name, (_, kept) in files.items() if kept}


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    def failing(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(tmp_path / "out.bin", failing)
    assert list(tmp_path.iterdir()) == []


# --- clear errors: corrupt, incomplete or inconsistent files -----------------------------------


@pytest.mark.parametrize("keep", [0, 1, 7, 100, -100, -1])
@pytest.mark.parametrize("hashed", [True, False], ids=["hashed", "before-the-hash"])
def test_truncated_safetensors_is_refused_by_name(model, saved, keep, hashed):
    if not hashed:
        _edit_config(saved, lambda config: config.pop("params_sha256"))
    path = saved / "params.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep >= 0 else len(data) + keep])
    with pytest.raises(LensFileError, match=r"params\.safetensors") as info:
        TunedLens.load(saved, model=model)
    assert "again" in str(info.value)
    if keep == 0:
        assert "empty" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\x80\x02}q", b"not a pickle at all"])
def test_unreadable_params_pt_is_refused_by_name(model, tmp_path, content):
    _write_tuned_lens_artifact(tmp_path, TunedLens.from_model(model), prefixed=False)
    (tmp_path / "params.pt").write_bytes(content)
    with pytest.raises(LensFileError, match=r"params\.pt cannot be read") as info:
        TunedLens.load(tmp_path, model=model)
    if not content:
        assert "empty" in str(info.value)


def test_params_pt_holding_no_state_dict_is_refused(model, tmp_path):
    _write_tuned_lens_artifact(tmp_path, TunedLens.from_model(model), prefixed=False)
    torch.save([torch.zeros(2)], tmp_path / "params.pt")
    with pytest.raises(LensFileError, match=r"params\.pt holds a list; expected a state dict"):
        TunedLens.load(tmp_path, model=model)


@pytest.mark.parametrize(
    "text, found",
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        ('{"d_model": 32,', "is not valid JSON: .* line 1"),
        ("[1, 2]", "holds an array"),
        ("null", "holds null"),
        ('"lens"', "holds a string"),
    ],
)
def test_invalid_config_json_is_refused_by_name(model, saved, text, found):
    (saved / "config.json").write_text(text)
    with pytest.raises(LensFileError, match=rf"config\.json {found}"):
        TunedLens.load(saved, model=model)


def test_config_json_that_is_not_utf8_is_refused(model, saved):
    (saved / "config.json").write_bytes(b'{"d_model": "\xff"}')
    with pytest.raises(LensFileError, match=r"config\.json is not UTF-8"):
        TunedLens.load(saved, model=model)


@pytest.mark.parametrize("key", ["d_model", "num_hidden_layers", "base_model_name_or_path"])
def test_config_missing_a_required_key_names_it(model, saved, key):
    _edit_config(saved, lambda config: config.pop(key))
    with pytest.raises(LensFileError, match=rf"config\.json: missing key '{key}'"):
        TunedLens.load(saved, model=model)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("d_model", "32", "an integer"),
        ("d_model", 32.0, "an integer"),
        ("num_hidden_layers", True, "an integer"),
        ("num_hidden_layers", 0, "a positive integer"),
        ("bias", "yes", "true or false"),
        ("base_model_name_or_path", 7, "a string"),
        ("component", "resid_middle", "component must be one of"),
        ("fingerprint", [1, 2], "an object or null"),
        ("unembed_hash", 12, "a string or null"),
    ],
)
def test_config_value_of_the_wrong_type_names_the_key(model, saved, key, value, expected):
    _edit_config(saved, lambda config: config.__setitem__(key, value))
    with pytest.raises(LensFileError, match=rf"config\.json: key '{key}'") as info:
        TunedLens.load(saved, model=model)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "key, value",
    [("d_vocab", None), ("n_layers", "3"), ("fold_ln", 1), ("unembedding_hash", None)],
)
def test_bad_fingerprint_entries_are_named(model, saved, key, value):
    def edit(config):
        if value is None:
            config["fingerprint"].pop(key)
        else:
            config["fingerprint"][key] = value

    _edit_config(saved, edit)
    with pytest.raises(LensFileError, match=rf"config\.json: .*'fingerprint\.{key}'"):
        TunedLens.load(saved, model=model)


def test_config_contradicting_its_fingerprint_is_refused(model, saved):
    _edit_config(saved, lambda config: config.__setitem__("num_hidden_layers", N_LAYERS + 1))
    with pytest.raises(LensFileError, match="'num_hidden_layers' is 4, but the fingerprint"):
        TunedLens.load(saved, model=model)


def test_translator_of_the_wrong_shape_is_refused_by_name(model, saved):
    tensors = load_file(saved / "params.safetensors")
    tensors["layer_translators.1.weight"] = torch.zeros(D_MODEL, D_MODEL + 1)
    _rewrite_params(saved, tensors)
    with pytest.raises(LensFileError, match=r"layer_translators\.1\.weight has shape") as info:
        TunedLens.load(saved, model=model)
    assert f"[{D_MODEL}, {D_MODEL + 1}], expected [{D_MODEL}, {D_MODEL}]" in str(info.value)


def test_tuned_lens_artifact_of_the_wrong_shape_is_refused_by_name(model, tmp_path):
    _write_tuned_lens_artifact(tmp_path, TunedLens.from_model(model), prefixed=False)
    state = torch.load(tmp_path / "params.pt", weights_only=True)
    state["0.bias"] = torch.zeros(D_MODEL + 1)
    torch.save(state, tmp_path / "params.pt")
    with pytest.raises(LensFileError, match=r"params\.pt: layer_translators\.0\.bias has shape"):
        TunedLens.load(tmp_path, model=model)


def test_missing_translator_is_refused_by_name(model, saved):
    tensors = load_file(saved / "params.safetensors")
    del tensors[f"layer_translators.{N_LAYERS - 1}.weight"]
    _rewrite_params(saved, tensors)
    with pytest.raises(LensFileError, match=rf"missing \['layer_translators\.{N_LAYERS - 1}"):
        TunedLens.load(saved, model=model)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_parameters_are_refused_by_name(model, saved, value):
    tensors = load_file(saved / "params.safetensors")
    tensors["layer_translators.2.bias"][3] = value
    _rewrite_params(saved, tensors)
    with pytest.raises(LensFileError, match=r"layer_translators\.2\.bias holds 1 NaN or inf"):
        TunedLens.load(saved, model=model)


def test_integer_parameters_are_refused_by_name(model, saved):
    tensors = load_file(saved / "params.safetensors")
    tensors["layer_translators.0.weight"] = torch.zeros(D_MODEL, D_MODEL, dtype=torch.int32)
    _rewrite_params(saved, tensors)
    with pytest.raises(LensFileError, match=r"layer_translators\.0\.weight has dtype"):
        TunedLens.load(saved, model=model)


# --- paths: save onto a file, load from nowhere or from a file ---------------------------------


def test_save_onto_a_file_is_refused_and_leaves_it(model, tmp_path):
    path = tmp_path / "lens"
    path.write_text("my notes")
    with pytest.raises(OutputExistsError, match=r"lens.*is a file"):
        _trained(model).save(path)
    assert path.read_text() == "my notes"
    with pytest.raises(OutputExistsError, match="part of that path is a file"):
        _trained(model).save(path / "inner")


def test_save_onto_an_existing_lens_replaces_it(model, saved):
    _trained(model, seed=7).save(saved)
    assert _same_parameters(TunedLens.load(saved, model=model), _trained(model, seed=7))


def test_load_of_a_missing_path_says_so(model, tmp_path):
    with pytest.raises(LensNotFoundError, match=r"nowhere: the path does not exist") as info:
        TunedLens.load(tmp_path / "nowhere", model=model)
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("name", ["config.json", "params.safetensors", "notes.txt"])
def test_load_of_a_file_says_to_pass_the_directory(model, saved, name):
    path = saved / name
    path.touch()
    with pytest.raises(LensNotFoundError, match=rf"{name}: it is a file") as info:
        TunedLens.load(path, model=model)
    assert (str(saved) in str(info.value).split("it is a file")[1]) == (name != "notes.txt")


def test_config_without_parameters_is_not_found(model, saved):
    (saved / "params.safetensors").unlink()
    with pytest.raises(LensNotFoundError, match=r"has config\.json but neither"):
        TunedLens.load(saved, model=model)
