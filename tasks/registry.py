"""Register stage: log the recommender, register it, and run the champion/challenger gate.

    evaluated run --log_recommender--> pyfunc model in the run (models-from-code)
                  --register--------> version N of `cft-<dataset>` (once per run), alias `challenger`
                  --gate------------> alias `champion` moves to N only if N's gate metric beats
                                      the champion's on the same evaluation data by the margin

Aliases, not the deprecated stages, carry the roles (environment-notes.md). Every change of the
champion (gate, `cft promote`, `cft rollback`) is appended to the registered model's
`champion_history` tag with its reason, and runs under a per-model file lock so two promotions
never interleave; on a team stack the flow's promote task is also limited to one at a time by a
Prefect concurrency limit (prefect.yaml).
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from schemas.config import PipelineConfig
from tasks.storage import fingerprint
from tasks.tracking import mlflow_metric_name

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ARTIFACT = "recommender"  # name of the logged pyfunc model inside the run
PYFUNC_FILE = Path(__file__).with_name("recommender_pyfunc.py")
HISTORY_TAG = "champion_history"


def _client(uri: str):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, registry_uri=uri)


def promotion_lock(cfg: PipelineConfig, name: str) -> FileLock:
    """One promotion at a time per registered model (on this data root)."""
    path = cfg.data.data_root / "registry" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, timeout=600)


def gate_data_key(cfg: PipelineConfig, sequences: Path) -> str:
    """Identity of the gate's evaluation data (records + settings, not the model): two versions'
    metrics are comparable only when their keys are equal."""
    return fingerprint({"data": sequences.name, "eval": cfg.gate_eval().model_dump(), "domain": cfg.data.domain})


# ------------------------------------------------------------------------------ log + register


def log_recommender(cfg: PipelineConfig, run_id: str, model_dir: Path, sequences: Path, uri: str) -> str:
    """Log the pyfunc recommender into run `run_id` (once); returns its model URI. It ranks the
    way the gate measures (`registry.gate_metric`'s method), with the run's ranking settings."""
    import mlflow
    import torch
    import transformers
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    from tasks.evaluation import ensure_catalogue_embeddings
    from tasks.settings import ranking_settings

    client = _client(uri)
    tags = client.get_run(run_id).data.tags
    if tags.get("cft.recommender_uri"):
        return tags["cft.recommender_uri"]
    settings = ranking_settings(cfg, cfg.gate_method())
    artifacts = {"model": str(model_dir), "catalogue": str(sequences / "catalogue.parquet")}
    if settings.method == "grounding":
        artifacts["item_embeddings"] = str(ensure_catalogue_embeddings(cfg, model_dir, sequences))
    signature = ModelSignature(
        inputs=Schema([ColSpec(Array(DataType.string), "history")]),
        outputs=Schema([ColSpec(Array(DataType.long), "item_ids"), ColSpec(Array(DataType.string), "titles"),
                        ColSpec(Array(DataType.double), "scores")]),
        params=ParamSchema([ParamSpec("k", DataType.long, cfg.registry.top_k),
                            ParamSpec("exclude_history", DataType.boolean, True)]),
    )
    import cft_core

    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(PYFUNC_FILE),
            artifacts=artifacts,
            code_paths=[str(Path(cft_core.__file__).parent)],
            model_config={"domain": cfg.data.domain, "top_k": cfg.registry.top_k,
                          "ranking": json.dumps(settings.to_dict())},
            signature=signature,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
                              f"mlflow=={mlflow.__version__}", "pandas", "pyarrow", "numpy", "safetensors",
                              "tokenizers"],
        )
        mlflow.set_tag("cft.recommender_uri", info.model_uri)
    return info.model_uri


def _wait_ready(client, name: str, version: str, timeout: float = 300.0):
    """Registration is asynchronous on some stores: wait for READY (environment-notes.md)."""
    deadline = time.monotonic() + timeout
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            return mv
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(f"model {name} version {version} did not become READY: {mv.status} {mv.status_message}")
        time.sleep(1.0)


def register(cfg: PipelineConfig, run_id: str, model_uri: str, tags: dict[str, str], uri: str):
    """Register `model_uri` as a version of `cfg.registered_model_name()`, at most once per run.
    Returns the ModelVersion (the existing one when this run was registered before)."""
    import mlflow

    client = _client(uri)
    name = cfg.registered_model_name()
    with promotion_lock(cfg, name):
        existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        if existing:
            return _wait_ready(client, name, str(existing[0].version))
        try:
            client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(name, description=f"CFT recommender for dataset {cfg.data.name}")
        # A server needs the logged model's id beside its models:/<id> source.
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        mv = client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)
        return _wait_ready(client, name, str(mv.version))


def version_tags(cfg: PipelineConfig, data_fingerprint: str, metrics: dict[str, float], split: str,
                 model_dir: Path) -> dict[str, str]:
    """Version tags: what the version is (dataset, data fingerprint, objective, model folder) and
    a handful of headline metrics; every metric is in the run and in the version's model card."""
    tags = {"dataset": cfg.data.name, "data_fingerprint": data_fingerprint, "objective": cfg.train.objective,
            "model_dir": str(model_dir.resolve())}
    served = "constrained" if cfg.gate_method() == "constrained" else "grounding_adjusted"
    for key in (f"{served}/NDCG@10", f"{served}/HR@10", "most_popular/NDCG@10"):
        if key in metrics:
            tags[mlflow_metric_name(split, key)] = f"{metrics[key]:.6g}"
    return tags


def model_card(cfg: PipelineConfig, evaluation, run_id: str) -> str:
    """The version's description: a short model card (what it is, how it was trained, its metrics)."""
    from tasks.evaluation import metrics_table

    alpha, beta = cfg.train.loss_settings()
    return "\n".join([
        f"**{cfg.train.objective.upper()}** recommender for `{cfg.data.name}`: model source "
        f"`{cfg.model.source}`, alpha {alpha:g}, beta {beta:g}, serves by `{cfg.gate_method()}` ranking, "
        f"MLflow run `{run_id}`.", "",
        f"{evaluation.split} split, {evaluation.rows:,} rows, full catalogue:", "",
        metrics_table(evaluation.metrics, cfg.eval.ks)])


def register_model(cfg: PipelineConfig, run_id: str | None, model_dir: Path, sequences: Path,
                   data_fingerprint: str, evaluation) -> str:
    """Log the recommender into the training's run and register it (once per run), with its
    headline tags and model card. `evaluation`: the run's `EvalOutput`. Returns the version."""
    if not run_id:
        raise ValueError("registration needs an MLflow run: set tracking.enabled = true")
    from tasks.tracking import tracking_uri

    uri = tracking_uri(cfg)
    model_uri = log_recommender(cfg, run_id, model_dir, sequences, uri)
    tags = version_tags(cfg, data_fingerprint, evaluation.metrics, evaluation.split, model_dir)
    mv = register(cfg, run_id, model_uri, tags, uri)
    _client(uri).update_model_version(mv.name, str(mv.version), description=model_card(cfg, evaluation, run_id))
    log.info("registered %s version %s", mv.name, mv.version)
    return str(mv.version)


# ------------------------------------------------------------------------------ gate


@dataclass(frozen=True)
class GateDecision:
    version: str
    promoted: bool
    reason: str
    challenger_value: float
    champion_version: str | None
    champion_value: float | None


def decide(challenger: float, champion: float | None, margin: float) -> tuple[bool, str]:
    """The gate rule, on its own: promote iff there is no champion, or challenger > champion + margin."""
    if math.isnan(challenger):
        return False, "the challenger's gate metric is NaN"
    if champion is None:
        return True, f"no champion yet (challenger {challenger:.4f})"
    if challenger > champion + margin:
        return True, f"challenger {challenger:.4f} > champion {champion:.4f} + margin {margin:g}"
    return False, f"challenger {challenger:.4f} does not beat champion {champion:.4f} + margin {margin:g}"


def _history(client, name: str) -> list[dict]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


def _set_champion(client, name: str, version: str, action: str, reason: str) -> None:
    history = _history(client, name)
    history.append({"version": str(version), "action": action, "reason": reason, "by": getpass.getuser(),
                    "at": datetime.now(UTC).isoformat(timespec="seconds")})
    client.set_registered_model_alias(name, CHAMPION, str(version))
    # Tag values are capped (5,000 chars on SQL stores): keep the most recent entries.
    text = json.dumps(history)
    while len(text) > 4800 and len(history) > 1:
        history = history[1:]
        text = json.dumps(history)
    client.set_registered_model_tag(name, HISTORY_TAG, text)
    client.set_model_version_tag(name, str(version), "champion.reason", reason)


def _alias_version(client, name: str, alias: str) -> str | None:
    import mlflow

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def gate(cfg: PipelineConfig, version: str, challenger_value: float, data_key: str, uri: str,
         evaluate_champion: Callable[[object], float]) -> GateDecision:
    """Make `version` the challenger; promote it to champion if it beats the champion.

    The champion's value comes from its tags when it was measured on the same data (`data_key`);
    otherwise `evaluate_champion(model_version)` measures it now on this run's gate data.
    """
    client = _client(uri)
    name, version = cfg.registered_model_name(), str(version)
    margin = cfg.registry.gate_margin
    with promotion_lock(cfg, name):
        client.set_model_version_tag(name, version, "gate.metric", cfg.registry.gate_metric)
        client.set_model_version_tag(name, version, "gate.value", repr(float(challenger_value)))  # exact, so equal stays equal
        client.set_model_version_tag(name, version, "gate.data_key", data_key)
        champion = _alias_version(client, name, CHAMPION)
        if champion == version:
            return GateDecision(version, True, "already champion", challenger_value, champion, challenger_value)
        champion_value = None
        if champion is not None:
            mv = client.get_model_version(name, champion)
            if mv.tags.get("gate.data_key") == data_key and mv.tags.get("gate.metric") == cfg.registry.gate_metric:
                champion_value = float(mv.tags["gate.value"])
            else:
                log.info("champion v%s was gated on other data; evaluating it on this run's data", champion)
                champion_value = float(evaluate_champion(mv))
        promoted, reason = decide(challenger_value, champion_value, margin)
        client.set_model_version_tag(name, version, "gate.decision", "promoted" if promoted else "kept challenger")
        client.set_model_version_tag(name, version, "gate.reason", reason)
        if promoted:
            _set_champion(client, name, version, "gate", reason)
            if _alias_version(client, name, CHALLENGER) == version:
                client.delete_registered_model_alias(name, CHALLENGER)
        else:
            client.set_registered_model_alias(name, CHALLENGER, version)
        log.info("gate %s v%s: %s", name, version, reason)
        return GateDecision(version, promoted, reason, challenger_value, champion, champion_value)


def gate_model(cfg: PipelineConfig, version: str, model_dir: Path, sequences: Path) -> GateDecision:
    """The gate as one call: evaluate the new version's model on the gate split (`cfg.gate_eval()`),
    then `gate`, which measures the champion on the same rows when its stored value is not
    comparable. Serialised per model by `promotion_lock`."""
    from tasks.evaluation import evaluate
    from tasks.tracking import tracking_uri

    gate_cfg = cfg.model_copy(update={"eval": cfg.gate_eval()})
    metric = cfg.registry.gate_metric
    ours = evaluate(gate_cfg, model_dir, sequences, progress=False).metrics
    if metric not in ours:
        raise ValueError(f"registry.gate_metric {metric!r} is not among the metrics: {sorted(ours)}")

    def champion_value(champion_version) -> float:
        champion_dir = download_version_model(cfg, champion_version)
        return evaluate(gate_cfg, champion_dir, sequences, progress=False).metrics[metric]

    return gate(cfg, version, ours[metric], gate_data_key(cfg, sequences), tracking_uri(cfg), champion_value)


def promote(cfg: PipelineConfig, name: str, version: str, reason: str, uri: str) -> None:
    """A person's override: make `version` the champion, recording why."""
    if not reason.strip():
        raise ValueError("a manual promotion needs a reason")
    client = _client(uri)
    version = str(version)
    with promotion_lock(cfg, name):
        client.get_model_version(name, version)  # raises when it does not exist
        _set_champion(client, name, version, "promote", reason)
        if _alias_version(client, name, CHALLENGER) == str(version):
            client.delete_registered_model_alias(name, CHALLENGER)


def rollback(cfg: PipelineConfig, name: str, reason: str, uri: str) -> str:
    """Make the champion before the current one champion again; returns that version."""
    if not reason.strip():
        raise ValueError("a rollback needs a reason")
    client = _client(uri)
    with promotion_lock(cfg, name):
        current = _alias_version(client, name, CHAMPION)
        earlier = [h["version"] for h in _history(client, name) if h["version"] != current]
        if current is None or not earlier:
            raise ValueError(f"{name} has no earlier champion to roll back to (current: {current})")
        target = earlier[-1]
        _set_champion(client, name, target, "rollback", f"{reason} (was v{current})")
        return target


def download_version_model(cfg: PipelineConfig, version) -> Path:
    """A registered version's model folder: its recorded local folder when still there, else the
    copy inside the registered pyfunc, downloaded once under <data_root>/registry/downloads."""
    import mlflow

    local = Path(version.tags.get("model_dir", ""))
    if local.name and (local / "model.safetensors").is_file():
        return local
    dest = cfg.data.data_root / "registry" / "downloads" / f"{version.name}-v{version.version}"
    if not (dest / "artifacts" / "model" / "model.safetensors").is_file():
        tmp = dest.with_name(dest.name + ".tmp")
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(tmp))
        if dest.exists():
            import shutil

            shutil.rmtree(dest)
        tmp.replace(dest)
    return dest / "artifacts" / "model"
