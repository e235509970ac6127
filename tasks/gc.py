"""`cft gc`: free the data root of training runs nothing needs any more.

A training folder (its model, its evaluations) is kept when a registered version was made from
it (the version's `model_dir` tag points into it) or when it is unfinished (no model/ yet: a
run that may resume). Everything else under <data_root>/training is removed. Registered versions
keep their own copy of the model in the MLflow artifact store either way.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from schemas.config import PipelineConfig


@dataclass(frozen=True)
class Collected:
    removed: list[tuple[Path, int]]  # (folder, bytes)
    kept: list[tuple[Path, str]]  # (folder, why)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def collect(cfg: PipelineConfig, dry_run: bool = True) -> Collected:
    """Find (and unless `dry_run`, remove) the training folders nothing uses."""
    root = cfg.data.data_root / "training"
    from tasks.registry import registered_model_dirs

    in_use = registered_model_dirs(cfg) if cfg.tracking.enabled else set()
    removed, kept = [], []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        model = (run_dir / "model").resolve()
        if not (model / "training.json").is_file():
            kept.append((run_dir, "unfinished (may resume)"))
        elif model in in_use:
            kept.append((run_dir, "a registered version's model"))
        else:
            removed.append((run_dir, folder_size(run_dir)))
            if not dry_run:
                shutil.rmtree(run_dir)
    return Collected(removed, kept)
