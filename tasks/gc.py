"""`cft gc`: free the data root of training runs nothing needs any more.

A training folder (its model, its evaluations) is removed only when the tracking store knows it
(its MLflow run is there) and no registered version was made from it (no version's `model_dir`
tag points into it). Kept: unfinished folders (no model/ yet: a run that may resume), registered
versions' models, and trainings whose run is not in this store, since a store that does not know
them cannot say whether they are registered elsewhere (a team server, another tracking URI).
Without a store there is nothing to decide by: that is an error, not "nothing is registered".
Registered versions keep their own copy of the model in the MLflow artifact store either way.
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
    import json

    from schemas.errors import ConfigError, InputError
    from tasks.registry import registered_model_dirs
    from tasks.tracking import missing_store, tracking_uri, training_run_here

    if not cfg.tracking.enabled:
        raise ConfigError("cft gc keeps what the model registry uses, and tracking is disabled in this profile "
                          "(tracking.enabled = false): enable it, pointing at the store your versions are in")
    if (database := missing_store(tracking_uri(cfg, create=False))) is not None:
        raise InputError(f"there is no tracking store at {database}: cft gc cannot tell which trainings are "
                         "registered without it; point tracking.tracking_uri (or MLFLOW_TRACKING_URI) at your store")
    root = cfg.data.data_root / "training"
    in_use = registered_model_dirs(cfg)
    removed, kept = [], []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        model = (run_dir / "model").resolve()
        if not (model / "training.json").is_file():
            kept.append((run_dir, "unfinished (may resume)"))
        elif model in in_use:
            kept.append((run_dir, "a registered version's model"))
        elif training_run_here(cfg, run_dir, json.loads((model / "training.json").read_text())) is None:
            kept.append((run_dir, f"its MLflow run is not in {tracking_uri(cfg)} (tracked in another store, or not at all)"))
        else:
            removed.append((run_dir, folder_size(run_dir)))
            if not dry_run:
                shutil.rmtree(run_dir)
    return Collected(removed, kept)
