"""PredictionTrajectory at two commits, side by side: time and peak memory of one pass.

A refactor must leave the streaming pass as fast and as small as it was. This runs
`trajectory_memory.py`'s `ours` case (build every statistic in one pass, read them, then
`total_variation` against a second trajectory) on the embedded SmolLM2-135M with the
package of another commit and with this tree's, alternating, `--rounds` times each, and
prints each step's median seconds, its peak MiB and the ratio this / other.

    python benchmarks/trajectory_before_after.py REV [--positions 512 2048] [--rounds 2]

REV is checked out into a temporary git worktree (removed afterwards). Run it alone:
two torch processes on two cores slow each other several times over.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trajectory_memory

ROOT = Path(__file__).resolve().parents[1]


def _ours(root: Path, positions: int) -> dict:
    trajectory_memory.ROOT = root  # the subprocess puts this tree's package on PYTHONPATH
    return trajectory_memory._measured("ours", positions, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the other commit (e.g. the one before a refactor)")
    parser.add_argument("--positions", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(other), args.rev],
            check=True,
        )
        try:
            print(f"other = {args.rev}, this = working tree; median of {args.rounds} rounds")
            print(
                f"{'positions':>9}  {'step':<14}{'other s':>9}{'this s':>9}{'ratio':>7}"
                f"{'other MiB':>11}{'this MiB':>10}"
            )
            for positions in args.positions:
                runs: dict[str, list[dict]] = {"other": [], "this": []}
                for _ in range(args.rounds):
                    runs["other"].append(_ours(other, positions))
                    runs["this"].append(_ours(ROOT, positions))
                for step in ("build", "entropy etc.", "total_variation"):
                    got = {
                        side: [r[step] for r in results if step in r]
                        for side, results in runs.items()
                    }
                    if not all(got.values()):
                        print(f"{positions:>9}  {step:<14} missing: {runs}")
                        continue
                    s = {side: statistics.median(v[0] for v in vals) for side, vals in got.items()}
                    m = {side: max(v[1] for v in vals) for side, vals in got.items()}
                    print(
                        f"{positions:>9}  {step:<14}{s['other']:>9.2f}{s['this']:>9.2f}"
                        f"{s['this'] / s['other']:>7.2f}{m['other']:>11.0f}{m['this']:>10.0f}"
                    )
                sys.stdout.flush()
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False
            )


if __name__ == "__main__":
    main()
