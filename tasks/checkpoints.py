"""Checkpoints are trusted only when they are this run's own.

Resuming loads Trainer and DeepSpeed checkpoint files with `torch.load`, which can unpickle
(run code). So when a checkpoint is saved, the run records the SHA-256 of every file in it in
`<run_dir>/checkpoint_digests.json` (outside the checkpoint), and before resuming it checks the
files against that record: a changed, added or missing file, or a checkpoint the run never
recorded, is refused before anything is loaded. The data root itself is trusted storage (a
shared one needs exactly this check); see the README's security section.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.errors import DataError
from tasks.storage import file_digest, write_json_atomic

RECORD = "checkpoint_digests.json"


def _digests(checkpoint: Path) -> dict[str, str]:
    return {str(f.relative_to(checkpoint)): file_digest(f) for f in sorted(checkpoint.rglob("*")) if f.is_file()}


def record(run_dir: Path, checkpoint: Path) -> None:
    """Add (or replace) the digests of `checkpoint`'s files in the run's record."""
    path = run_dir / RECORD
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved[checkpoint.name] = _digests(checkpoint)
    write_json_atomic(path, saved)


def verify(run_dir: Path, checkpoint: Path) -> None:
    """Raise DataError unless every file of `checkpoint` is exactly what this run saved."""
    path = run_dir / RECORD
    expected = json.loads(path.read_text()).get(checkpoint.name) if path.is_file() else None
    if expected is None:
        raise DataError(f"{checkpoint}: this run recorded no digests for it, so it is not resumed "
                        f"(it was not written by this run); delete {checkpoint.parent} to train from the start")
    found = _digests(checkpoint)
    changed = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    added, missing = sorted(found.keys() - expected.keys()), sorted(expected.keys() - found.keys())
    if changed or added or missing:
        what = "; ".join(f"{label}: {names[:3]}" for label, names in
                         (("changed", changed), ("added", added), ("missing", missing)) if names)
        raise DataError(f"{checkpoint}: files differ from what this run saved ({what}); refusing to load "
                        f"it. Delete {checkpoint.parent} to train from the start")


def digest_callback(run_dir: Path):
    """A Trainer callback that records each checkpoint's digests right after it is saved (process 0)."""
    from transformers import TrainerCallback

    class CheckpointDigests(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                record(run_dir, Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return CheckpointDigests()
