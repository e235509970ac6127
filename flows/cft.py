"""The `cft` flow: the whole pipeline, top to bottom (architecture.md).

    ingest -> validate -> build sequences -> train -> evaluate -> register -> gate

Run it in-process (`cft run -c configs/smoke.yaml`), or through a deployment:
`prefect deployment run cft/full-pipeline --param profile=configs/smoke.yaml`.
Every stage is a task in tasks/pipeline.py; this file holds only the order.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from schemas.config import PipelineConfig, load_config
from tasks.pipeline import (
    build_sequences_task,
    evaluate_task,
    gate_task,
    ingest_task,
    metrics_artifact,
    metrics_summary,
    nothing_new_task,
    register_baselines_task,
    register_task,
    train_task,
    validate_task,
)


@flow(name="cft", description="CFT recommender: data -> train -> evaluate -> register/promote.")
def cft_pipeline(
    profile: str = "configs/demo.yaml",
    overrides: dict[str, Any] | None = None,
    config: PipelineConfig | None = None,
    as_of: str | None = None,
) -> dict[str, Any]:
    """profile: a YAML file under configs/ (relative to the project); overrides: dotted fields,
    e.g. {"train.seed": 1, "data.max_samples": {"test": 50}}; config: an already validated
    config (what `cft run` passes), used instead of profile and overrides; as_of: see the data as
    of this time (ISO-8601, `now`, or `scheduled`: this flow run's scheduled start time, which the
    scheduled deployment passes)."""
    cfg = config if config is not None else load_config(profile, overrides or {})
    if as_of:
        cfg = cfg.updated({"data.as_of": scheduled_time() if as_of == "scheduled" else as_of})

    ingested = ingest_task(cfg.data)
    validation = validate_task(ingested, cfg.data)
    sequences = build_sequences_task(ingested, cfg.data, wait_for=[validation])
    unchanged = nothing_new_task(cfg, sequences) if cfg.registry.enabled and cfg.tracking.enabled else None
    if unchanged:  # no interaction since a gated run of these settings: nothing to train
        summary = metrics_summary(cfg, None, None, None, unchanged)
        metrics_artifact(summary, cfg)
        return {"run_id": None, "model_dir": None, "metrics": None, "registered": None, "gate": None,
                "unchanged": unchanged, "as_of": _as_of(cfg), "summary": summary}

    trained = train_task(cfg, sequences)
    evaluation = evaluate_task(cfg, trained, sequences)
    version = decision = None
    if cfg.registry.enabled and cfg.tracking.enabled:
        register_baselines_task(cfg, sequences)
        version = register_task(cfg, trained, sequences, evaluation)
        decision = gate_task(cfg, version, trained, sequences)

    run_id = trained.summary.get("mlflow_run_id")
    summary = metrics_summary(cfg, evaluation, run_id, decision)
    metrics_artifact(summary, cfg)
    return {"run_id": run_id, "model_dir": str(trained.model_dir), "metrics": evaluation.metrics,
            "registered": {"name": cfg.registered_model_name(), "version": version} if version else None,
            "gate": decision, "unchanged": None, "as_of": _as_of(cfg), "summary": summary}


def _as_of(cfg: PipelineConfig) -> str | None:
    return str(cfg.data.as_of) if cfg.data.as_of else None


def scheduled_time() -> str:
    """This flow run's scheduled start time (ISO-8601); now when it was not scheduled."""
    from datetime import UTC, datetime

    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time
    return (when or datetime.now(UTC)).isoformat()
