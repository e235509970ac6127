"""What the registry holds over time: the versions' summary (`cft versions`), those `registry.keep_versions`
lets go, and their files.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from schemas.config import PipelineConfig
from schemas.errors import RegistryError, mlflow_absent
from tasks.registry.champion import champion_history, champion_stack
from tasks.registry.names import (
    KIND_TAG,
    RECOMMENDER_TAG,
    registered_models,
    registry_client,
    versions_newest_first,
)


@dataclass(frozen=True)
class VersionSummary:
    """One registered version as `cft versions` lists it: what it is, the window it was built on,
    what its gate measured and decided, and the aliases it holds."""

    version: str
    kind: str  # "llm", "popularity", "markov"
    created: str  # UTC, to the minute
    data: str  # the data window's fingerprint
    gate: str  # "<metric> <value> (champion vN <value>)", or "" for a version no gate judged
    decision: str  # "promoted", "kept challenger", or ""
    aliases: list[str]
    # The first version registered from the same training run, when this one is another ranking of it
    # (`served_ranking_key`: other beams, backfill, ...), else None.
    training_of: str | None = None


def versions_summary(client, name: str) -> tuple[list[VersionSummary], list[dict]]:
    """(every version of registered model `name`, newest first; its champion history, newest
    first: the entries of `champion_history`, {version, action, reason, by, at}). RegistryError for
    a model the registry does not have."""
    import mlflow

    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        if not mlflow_absent(e):
            raise
        raise RegistryError(f"no registered model {name} in this store ({e.message.splitlines()[0]})") from None
    held: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        held.setdefault(str(version), []).append(alias)
    out = []
    versions = versions_newest_first(client, name)
    first_of_run = {mv.run_id: str(mv.version) for mv in versions if mv.run_id}  # (newest first: the oldest wins)
    for mv in versions:
        t = mv.tags
        gate = ""
        if "gate.value" in t:
            champion = (f" (champion v{t['gate.champion_version']} {float(t['gate.champion_value']):.4f})"
                        if t.get("gate.champion_value", "None") != "None" else "")
            gate = f"{t['gate.metric']} {float(t['gate.value']):.4f}{champion}"
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        first = first_of_run.get(mv.run_id)
        out.append(VersionSummary(str(mv.version), t.get(KIND_TAG, "?"), created, t.get("data_fingerprint", ""),
                                  gate, t.get("gate.decision", ""), held.get(str(mv.version), []),
                                  first if first != str(mv.version) else None))
    return out, list(reversed(champion_history(model)))


# A version registered this recently may still be on its way through its run's gate.
RECENT_VERSION_S = 24 * 3600


def expendable_versions(client, name: str, keep: int) -> list:
    """The versions of registered model `name` that `registry.keep_versions = keep` lets go,
    newest first: those beyond the newest `keep` that hold no alias, that a rollback cannot return
    to (`champion_stack`) and that were registered RECENT_VERSION_S ago or more. None of them
    serves or can serve again without a person choosing it, which they can no longer do."""
    import mlflow

    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as e:  # not registered yet: nothing to let go
        if not mlflow_absent(e):
            raise
        return []
    spared = {str(v) for v in model.aliases.values()}
    spared |= set(champion_stack(champion_history(model)))
    before = (time.time() - RECENT_VERSION_S) * 1000  # creation_timestamp is in ms
    return [mv for mv in versions_newest_first(client, name)[keep:] if str(mv.version) not in spared and mv.creation_timestamp < before]


def _logged_model_id(mv) -> str | None:
    """The logged model a version was registered from: its source `models:/m-<id>` (a SQL
    registry leaves `ModelVersion.model_id` empty); None for a version registered from a path."""
    found = re.fullmatch(r"models:/(m-[0-9a-f]+)", mv.source or "")
    return mv.model_id or (found.group(1) if found else None)


def _files_of(client, mv):
    """The artifact repository of a version's logged model (its pyfunc and, for an LLM version,
    its model folder); None for a version with no logged model."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    model_id = _logged_model_id(mv)
    return get_artifact_repository(client.get_logged_model(model_id).artifact_location) if model_id else None


def version_bytes(client, mv) -> int:
    """Bytes of the files `delete_version` frees."""
    repo = _files_of(client, mv)

    def size(path: str | None) -> int:
        return sum(size(f.path) if f.is_dir else (f.file_size or 0) for f in repo.list_artifacts(path))

    return size(None) if repo is not None else 0


def delete_version(client, mv) -> None:
    """Delete a registered version, then its logged model's files (as `mlflow gc` does for a
    deleted logged model) and the logged model (marked deleted); the run with its metrics and
    evaluations stays. The run forgets the recommender it logged, so that registering the run
    again logs a new one. (Each logged model of this pipeline is registered once: `register`.)"""
    repo = _files_of(client, mv)
    client.delete_model_version(mv.name, str(mv.version))
    if repo is None:
        return
    repo.delete_artifacts()
    client.delete_logged_model(model_id := _logged_model_id(mv))
    if mv.run_id:  # (the run tag of each ranking it logged: `log_recommender`; before those, one tag)
        for tag, value in client.get_run(mv.run_id).data.tags.items():
            if tag.startswith(RECOMMENDER_TAG) and value == f"models:/{model_id}":
                client.delete_tag(mv.run_id, tag)


def registered_model_dirs(cfg: PipelineConfig) -> dict[Path, list[tuple[str, str, list[str]]]]:
    """The training model folders of every registered version in the store (all models): folder
    -> [(model name, version, the aliases it holds)]."""
    from tasks.tracking import tracking_uri

    client = registry_client(tracking_uri(cfg))
    dirs: dict[Path, list[tuple[str, str, list[str]]]] = {}
    for model in registered_models(client):
        for mv in sorted(client.search_model_versions(f"name='{model.name}'"), key=lambda v: int(v.version)):
            if mv.tags.get("model_dir"):
                aliases = sorted(a for a, v in model.aliases.items() if str(v) == str(mv.version))
                dirs.setdefault(Path(mv.tags["model_dir"]).resolve(), []).append((model.name, str(mv.version), aliases))
    return dirs
