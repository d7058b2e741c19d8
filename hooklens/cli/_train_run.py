"""Internal: the run directory of `hooklens train`: what a run wrote there, refusing,
continuing or starting it, and writing its lens with `history.json` at the end."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from hooklens.artifacts import atomic_write_text, write_lens_dir
from hooklens.core import distributed
from hooklens.errors import MissingFileError, OutputExistsError, RunStateError
from hooklens.lenses.tuned import TunedLens
from hooklens.training.keep_better import lost_lines
from hooklens.training.loop import CHECKPOINT_FILE, TrainHistory

RUN_FILE = "run.json"  # written once the run has started: the settings a --resume repeats
RUN_OUTPUTS = (RUN_FILE, "checkpoint", "lens", "history.json")  # what --overwrite removes


def _run_entries(output: Path) -> list[Path]:
    """What a run wrote in `output` (and temporaries a kill left of its atomic writes),
    run.json first."""
    found = []
    for name in RUN_OUTPUTS:
        found += [output / name, *sorted(output.glob(f".{name}.*.tmp"))]
    return [path for path in found if path.exists()]


def _holds_no_run(output: Path) -> bool:
    """Nothing a run would lose: absent, empty, or what a run that stopped before its
    first checkpoint leaves (its run.json, an empty checkpoint folder)."""
    if not output.exists():
        return True
    if set(output.iterdir()) - set(_run_entries(output)):
        return False  # files of the user's own
    work = (output / "lens", output / "history.json", output / "checkpoint" / CHECKPOINT_FILE)
    return not any(path.exists() for path in work)


def check_output(args: argparse.Namespace, output: Path, settings: dict) -> None:
    """Refuse to touch an existing run unless asked; check a resume repeats its settings
    and its data. Reads only: nothing is written before the run has started."""
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"--output {output} is a file: give a directory")
    if not args.resume:
        if not args.overwrite and not _holds_no_run(output):
            raise OutputExistsError(
                f"{output} is not empty: pass --resume to continue its run, --overwrite to "
                "replace it, or choose another --output"
            )
        return
    if not (output / "checkpoint" / CHECKPOINT_FILE).is_file():
        stopped = (
            " (its run stopped before its first checkpoint: start it again without --resume)"
            if (output / RUN_FILE).is_file() and _holds_no_run(output)
            else ""
        )
        raise MissingFileError(f"no checkpoint to resume in {output / 'checkpoint'}{stopped}")
    if not (output / RUN_FILE).is_file():
        raise RunStateError(
            f"{output} has a checkpoint but no {RUN_FILE}, so its settings are unknown: "
            "pass --overwrite to start again"
        )
    saved = json.loads((output / RUN_FILE).read_text())
    saved_config, config = saved.pop("config", {}), settings["config"]
    changed = [
        f"{key}: {saved[key]!r} then, {value!r} now"
        for key, value in settings.items()
        if key not in ("config", "data_hash") and key in saved and saved[key] != value
    ] + [
        f"{key}: {saved_config[key]!r} then, {value!r} now"
        for key, value in config.items()
        if key in saved_config and saved_config[key] != value
    ]
    if changed:
        raise RunStateError(
            f"--resume must repeat the run's settings ({'; '.join(changed)}): pass the "
            "values it started with, or --overwrite to start a new run"
        )
    if saved.get("data_hash") is not None and saved["data_hash"] != settings["data_hash"]:
        raise RunStateError(
            f"--resume: the content of --data {args.data} changed since the run started "
            f"(blake2b {saved['data_hash'][:12]}… then, {str(settings['data_hash'])[:12]}… "
            "now), so the rest of the run would train on other text: restore that data, or "
            "--overwrite to start a new run"
        )


def start_output(args: argparse.Namespace, output: Path, settings: dict) -> None:
    """Mark the run as started: with --overwrite, remove the old run first (its run.json
    before its lens, history and checkpoint, so that no kill leaves pieces of two runs
    under one run.json); then write this run's run.json. A resume writes nothing."""
    if distributed.is_primary() and not args.resume:
        for path in _run_entries(output):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / RUN_FILE, json.dumps(settings, indent=1) + "\n")
    distributed.barrier()


def save_run(
    output: Path, lens: TunedLens, history: TrainHistory, held_out: list[torch.Tensor] | None
) -> None:
    """The lens and history.json in one staged write (history last: a history.json
    means the lens beside it is the one it describes); one line per layer where the
    fine-tune lost to the start."""
    check = None
    if history.held_out is not None and held_out is not None:
        tokens = sum(batch.numel() for batch in held_out)
        check = {"tokens": tokens, "layers": history.held_out}
    text = json.dumps({"steps": list(history), "held_out": check}, indent=1) + "\n"
    write_lens_dir(
        output / "lens",
        lens.config.to_dict(),
        lens.state_dict(),
        also={output / "history.json": text},
    )
    if check is not None:
        for line in lost_lines(history.held_out or []):
            print(f"{line} (held-out KL on {check['tokens']:,} tokens)")
