"""The stages as Prefect tasks: retries, cache keys, persisted results, artifacts.

Each task is a thin wrapper around a plain stage function (tasks/data.py, training.py,
evaluation.py, registry.py), so everything here can also run without Prefect. The Prefect
layer adds:

- cache keys from the stage's own content address (source file bytes, settings, upstream
  fingerprints): a re-run with the same inputs finishes the task as `Cached` without calling the
  stage. A key exists only while the stage's output is complete on disk, so deleting an output
  folder makes the next run rebuild it rather than return a path that is gone;
- results persisted as JSON (never pickle) under Prefect's local storage;
- retries where failures are transient (reading a source, MLflow registry calls), never for bad
  data or a bad config: those fail the flow at once with the stage's message;
- artifacts: the validation summary and the metrics table with a link to the MLflow run.

Tasks pass small JSON-able dicts (paths as strings, fingerprints, metrics) between them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import CacheKeyFnPolicy, TaskSource

from schemas.config import DataConfig, PipelineConfig
from schemas.errors import DataError
from tasks.storage import fingerprint

# Results are small dicts: JSON, so reading a cached result never unpickles anything.
_RESULTS: dict[str, Any] = {"persist_result": True, "result_serializer": "json"}
_INPUT_ERRORS = (DataError, ValueError, TypeError, KeyError, FileNotFoundError)


def transient_only(task, task_run, state) -> bool:
    """retry_condition_fn: retry unless the error is about the input (bad data or config)."""
    try:
        state.result()
    except _INPUT_ERRORS:
        return False
    except BaseException:
        return True
    return False


def _stage_cache(target) -> CacheKeyFnPolicy:
    """A cache policy keyed by the stage's content-addressed output folder, `target(parameters)`
    (and the task's source code): same inputs, same key."""

    def key(context, parameters) -> str | None:
        try:
            return f"{context.task.name}-{fingerprint(str(target(parameters)))}"
        except Exception:  # e.g. a source that does not exist: no key; the task reports it
            return None

    return CacheKeyFnPolicy(cache_key_fn=key) + TaskSource()


def stage(task_fn, *args):
    """Call a cached stage task; if the cached result names an output that has since been deleted,
    run the stage again (refreshing the cache) instead of passing a dead path downstream."""
    out = task_fn(*args)
    path = out.get("path") or out.get("model_dir")
    if path and not Path(path).exists():
        get_run_logger().warning("%s: cached output %s is gone; running the stage again", task_fn.name, path)
        out = task_fn.with_options(refresh_cache=True)(*args)
    return out


# ------------------------------------------------------------------------------ data


def _ingest_target(p) -> Path:
    from tasks.data import ingest_target

    return ingest_target(p["cfg"])[0]


@task(name="ingest", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient_only,
      cache_policy=_stage_cache(_ingest_target), **_RESULTS)
def ingest_task(cfg: DataConfig) -> dict:
    """Read the source into interactions/items Parquet tables."""
    from tasks.data import ingest

    out = ingest(cfg)
    get_run_logger().info("ingested %s%s", out.path, " (reused)" if out.reused else "")
    return {"path": str(out.path), "fingerprint": out.fingerprint}


def _validate_target(p) -> str:
    # The suites' parameters (bounds, ranges) come from the data config: part of the key.
    return f"{Path(p['ingested']['path']) / 'validation.json'}:{fingerprint(p['cfg'].model_dump(mode='json'))}"


@task(name="validate", cache_policy=_stage_cache(_validate_target), **_RESULTS)
def validate_task(ingested: dict, cfg: DataConfig) -> dict:
    """Great Expectations suites on the ingested tables; publishes the summary as an artifact.
    A critical failure raises DataValidationError with every failed expectation."""
    from tasks.data import validate_ingested

    try:
        report = validate_ingested(Path(ingested["path"]), cfg)
    except DataError as e:
        if getattr(e, "report", None):
            _validation_artifact(cfg.name, e.report)
        raise
    _validation_artifact(cfg.name, report)
    return {"path": str(Path(ingested["path"]) / "validation.json"), "success": report["success"],
            "warnings": len(report["warnings"]), "checked": len(report["results"])}


def _validation_artifact(dataset: str, report: dict) -> None:
    rows = ["| table | column | expectation | result | unexpected |", "|---|---|---|---|---|"]
    for r in report["results"]:
        result = "ok" if r["success"] else ("FAILED" if r["severity"] == "critical" else "warning")
        rows.append(f"| {r['table']} | {r['column']} | {r['expectation']} | {result} | {r['unexpected_count'] or ''} |")
    head = (f"**{report['what']}**: {'passed' if report['success'] else 'FAILED'} "
            f"({len(report['failures'])} failed, {len(report['warnings'])} warnings)\n\n")
    create_markdown_artifact(head + "\n".join(rows), key=f"validation-{_slug(dataset)}",
                             description="Great Expectations validation of the ingested tables")


def _slug(text: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _sequences_target(p) -> Path:
    from tasks.data import sequences_target

    return sequences_target(p["ingested"]["fingerprint"], p["cfg"])[0]


@task(name="build-sequences", cache_policy=_stage_cache(_sequences_target), **_RESULTS)
def build_sequences_task(ingested: dict, validation: dict, cfg: DataConfig) -> dict:
    """D3-style behaviour sequences -> train/valid/test records + catalogue (validated too).
    `validation` is only an ordering edge: records are built from validated tables."""
    from tasks.data import StageOutput, build_sequences

    out = build_sequences(StageOutput(Path(ingested["path"]), ingested["fingerprint"], True), cfg)
    stats = json.loads((out.path / "manifest.json").read_text())["stats"]
    get_run_logger().info("sequences %s: %s", out.path, stats)
    return {"path": str(out.path), "fingerprint": out.fingerprint, "stats": stats}


# ------------------------------------------------------------------------------ train + evaluate


def _train_target(p) -> Path:
    from tasks.training import training_run_dir

    return training_run_dir(p["cfg"], p["sequences"]["fingerprint"]) / "model"


@task(name="train", cache_policy=_stage_cache(_train_target), **_RESULTS)
def train_task(cfg: PipelineConfig, sequences: dict) -> dict:
    """Fine-tune with the configured objective (CFT by default) under DeepSpeed; resumes from the
    last checkpoint when a previous attempt was interrupted."""
    from tasks.training import train

    out = train(cfg, Path(sequences["path"]), sequences["fingerprint"])
    s = out.summary
    return {"model_dir": str(out.model_dir), "run_id": s.get("mlflow_run_id"), "global_step": s["global_step"],
            "best_eval_loss": s["best_eval_loss"]}


def _eval_target(p) -> Path:
    from tasks.evaluation import evaluation_dir

    return evaluation_dir(p["cfg"], Path(p["trained"]["model_dir"]), Path(p["sequences"]["path"]))


@task(name="evaluate", cache_policy=_stage_cache(_eval_target), **_RESULTS)
def evaluate_task(cfg: PipelineConfig, trained: dict, sequences: dict) -> dict:
    """HR/NDCG@K over the full catalogue on `cfg.eval.split`, logged to the training's MLflow run."""
    from tasks.evaluation import evaluate, log_to_mlflow
    from tasks.tracking import tracking_uri

    result = evaluate(cfg, Path(trained["model_dir"]), Path(sequences["path"]))
    if trained["run_id"] and cfg.tracking.enabled:
        log_to_mlflow(result, trained["run_id"], tracking_uri(cfg))
    return {"path": str(result.path), "split": cfg.eval.split, "metrics": result.metrics}


# ------------------------------------------------------------------------------ register + gate

_REGISTRY_RETRIES: dict[str, Any] = {"retries": 3, "retry_delay_seconds": [2, 10, 30],
                                     "retry_condition_fn": transient_only}


@task(name="register", **_REGISTRY_RETRIES)
def register_task(cfg: PipelineConfig, trained: dict, sequences: dict, evaluation: dict) -> dict:
    """Log the pyfunc recommender into the run and register it (once per run)."""
    from tasks.evaluation import ensure_catalogue_embeddings
    from tasks.registry import log_recommender, register, version_tags
    from tasks.tracking import tracking_uri

    if not trained["run_id"]:
        raise ValueError("registration needs an MLflow run: set tracking.enabled = true")
    uri = tracking_uri(cfg)
    model_dir, seq = Path(trained["model_dir"]), Path(sequences["path"])
    emb = ensure_catalogue_embeddings(cfg, model_dir, seq)
    model_uri = log_recommender(cfg, trained["run_id"], model_dir, seq, emb, uri)
    tags = version_tags(cfg, sequences["fingerprint"], evaluation["metrics"], evaluation["split"], model_dir)
    mv = register(cfg, trained["run_id"], model_uri, tags, uri)
    get_run_logger().info("registered %s version %s", mv.name, mv.version)
    return {"name": mv.name, "version": str(mv.version), "model_uri": model_uri}


@task(name="gate", tags=["cft-promotion"], **_REGISTRY_RETRIES)
def gate_task(cfg: PipelineConfig, registered: dict, trained: dict, sequences: dict) -> dict:
    """Champion/challenger: evaluate on the gate split, compare with the champion on the same
    data, move the `champion` alias only if the margin is beaten. Tagged `cft-promotion`, which
    the stack limits to one running task (serialised promotions across workers)."""
    from dataclasses import asdict

    from tasks.evaluation import evaluate
    from tasks.registry import download_version_model, gate, gate_data_key
    from tasks.tracking import tracking_uri

    gate_cfg = cfg.model_copy(update={"eval": cfg.gate_eval()})
    seq = Path(sequences["path"])
    metric = cfg.registry.gate_metric
    ours = evaluate(gate_cfg, Path(trained["model_dir"]), seq, progress=False).metrics
    if metric not in ours:
        raise ValueError(f"registry.gate_metric {metric!r} is not among the metrics: {sorted(ours)}")

    def champion_value(version) -> float:
        return evaluate(gate_cfg, download_version_model(cfg, version), seq, progress=False).metrics[metric]

    uri = tracking_uri(cfg)
    decision = gate(cfg, registered["version"], ours[metric], gate_data_key(cfg, seq), uri, champion_value)
    get_run_logger().info("gate: %s", decision.reason)
    return asdict(decision)


def metrics_artifact(cfg: PipelineConfig, evaluation: dict, trained: dict, decision: dict | None) -> str:
    """Markdown table of HR/NDCG@{5,10,20} per method, with a link to the MLflow run."""
    from tasks.tracking import run_link

    ks = [k for k in (5, 10, 20) if k in cfg.eval.ks]
    m = evaluation["metrics"]
    lines = [f"### {cfg.data.name}: {cfg.train.objective}, {evaluation['split']} split", "",
             "| method | " + " | ".join(f"HR@{k} | NDCG@{k}" for k in ks) + " |",
             "|---|" + "---|---|" * len(ks)]
    for method in sorted({k.split("/")[0] for k in m}):
        lines.append(f"| {method} | " + " | ".join(f"{m[f'{method}/HR@{k}']:.4f} | {m[f'{method}/NDCG@{k}']:.4f}"
                                                   for k in ks) + " |")
    lines += ["", f"MLflow run: {run_link(cfg, trained['run_id'])}"]
    if decision:
        lines.append(f"Registry: {cfg.registered_model_name()} v{decision['version']}: "
                     f"{'champion' if decision['promoted'] else 'challenger'} ({decision['reason']})")
    text = "\n".join(lines)
    create_markdown_artifact(text, key=f"metrics-{_slug(cfg.data.name)}", description="CFT evaluation metrics")
    return text
