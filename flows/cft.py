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
    register_task,
    stage,
    train_task,
    validate_task,
)


def resolve_config(profile: str, overrides: dict[str, Any] | None, config: PipelineConfig | None) -> PipelineConfig:
    """`config` when given (a full typed config), else the YAML profile with the overrides."""
    return config if config is not None else load_config(profile, overrides or {})


@flow(name="cft", description="CFT recommender: data -> train -> evaluate -> register/promote.")
def cft_pipeline(
    profile: str = "configs/demo.yaml",
    overrides: dict[str, Any] | None = None,
    config: PipelineConfig | None = None,
) -> dict[str, Any]:
    """profile: a YAML file under configs/ (relative to the project); overrides: dotted fields,
    e.g. {"train.seed": 1, "data.max_samples": {"test": 50}}; config: a whole config instead."""
    cfg = resolve_config(profile, overrides, config)

    # stage(): a cached result whose output folder was deleted runs that stage again.
    ingested = stage(ingest_task, cfg.data)
    validation = stage(validate_task, ingested, cfg.data)
    sequences = stage(build_sequences_task, ingested, validation, cfg.data)
    trained = stage(train_task, cfg, sequences)
    evaluation = stage(evaluate_task, cfg, trained, sequences)

    registered = decision = None
    if cfg.registry.enabled and cfg.tracking.enabled:
        registered = register_task(cfg, trained, sequences, evaluation)
        decision = gate_task(cfg, registered, trained, sequences)

    summary = metrics_artifact(cfg, evaluation, trained, decision)
    return {"run_id": trained["run_id"], "model_dir": trained["model_dir"], "metrics": evaluation["metrics"],
            "registered": registered, "gate": decision, "summary": summary}
