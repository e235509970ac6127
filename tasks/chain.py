"""The pipeline as plain function calls, for everything that runs it without Prefect (the CLI,
`cft replay`, the benchmarks, tests). The Prefect flow (flows/cft.py) calls the very same
functions, each as a task, so there is one chain and one rule for what gets logged:

    prepare (ingest -> validate -> build) -> train_model -> evaluate_run
      -> register_baselines -> register_model -> gate_model

Reuse is decided by each stage's content address alone: a stage whose output folder exists
returns it (`reused`), so a re-run with the same inputs does no work, and a run with no new
interactions since a gated run of the same settings trains nothing and gates nothing
(`nothing_new`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from schemas.config import PipelineConfig
from tasks.data import StageOutput, prepare
from tasks.evaluation import EvalOutput, evaluate
from tasks.training import TrainOutput, train


def train_model(cfg: PipelineConfig, sequences: StageOutput, callbacks=(), console_progress: bool = True) -> TrainOutput:
    """`train`, starting from the registered champion when `model.source` is `champion`
    (`callbacks`, `console_progress`: as `train`'s `extra_callbacks` and `console_progress`)."""
    warm = None
    if cfg.warm_start() and cfg.tracking.enabled:
        from tasks.registry import warm_start_source

        warm = warm_start_source(cfg)
    return tracked_here(cfg, train(cfg, sequences.path, sequences.fingerprint, warm_start=warm,
                                   extra_callbacks=callbacks, console_progress=console_progress), sequences.path)


def tracked_here(cfg: PipelineConfig, trained: TrainOutput, sequences: Path) -> TrainOutput:
    """A reused training with its MLflow run in this store (recorded now when it was tracked
    elsewhere or not at all: `tasks.tracking.training_run_in_store`), so that evaluation and
    registration log into a run that exists."""
    from tasks.training import is_rank_zero

    if not (trained.reused and cfg.tracking.enabled and is_rank_zero()):
        return trained
    from tasks.tracking import training_run_in_store

    run_id = training_run_in_store(cfg, trained.run_dir, trained.model_dir, trained.summary, sequences)
    if run_id == trained.summary.get("mlflow_run_id"):
        return trained
    return replace(trained, summary={**trained.summary, "mlflow_run_id": run_id})


def evaluate_run(cfg: PipelineConfig, trained: TrainOutput, sequences: Path, progress: bool = True) -> EvalOutput:
    """Evaluate a trained model and log the result into its training's MLflow run (once per run
    and evaluation folder, see `tasks.tracking.log_evaluation`)."""
    result = evaluate(cfg, trained.model_dir, sequences, progress=progress)
    run_id = trained.summary.get("mlflow_run_id")
    if run_id and cfg.tracking.enabled:
        from tasks.tracking import log_evaluation, tracking_uri

        log_evaluation(result, run_id, tracking_uri(cfg), sequences)
    return result


def nothing_new(cfg: PipelineConfig, sequences: StageOutput) -> str | None:
    """When this run would train on the same rows with the same settings as a version that was
    gated before (no interaction arrived since): the message saying so. Else None."""
    if not (sequences.reused and cfg.registry.enabled and cfg.tracking.enabled):
        return None
    from datetime import UTC, datetime

    from tasks.registry import previous_decision
    from tasks.training import run_fingerprint

    before = previous_decision(cfg, run_fingerprint(cfg, sequences.fingerprint))
    if before is None:
        return None
    newest = json.loads((sequences.path / "manifest.json").read_text())["settings"].get("window_end")
    since = datetime.fromtimestamp(newest - 1, UTC).isoformat(timespec="seconds") if newest else "the last run"
    return (f"no new interactions since {since}; champion unchanged (v{before['champion']}); "
            f"v{before['version']} was trained on these rows and was {before['gate.decision']}: {before['gate.reason']}")


@dataclass(frozen=True)
class ChainOutput:
    sequences: StageOutput
    trained: TrainOutput | None  # None when nothing new arrived (then nothing is trained)
    evaluation: EvalOutput | None
    version: str | None = None  # the registered LLM version
    decision: dict | None = None  # the gate's decision (GateDecision as a dict)
    unchanged: str | None = None  # set when nothing new arrived (`nothing_new`)


def train_and_evaluate(cfg: PipelineConfig, progress: bool = True) -> ChainOutput:
    """prepare -> train_model -> evaluate_run, each reused when its inputs are unchanged."""
    _, sequences, _ = prepare(cfg.data)
    trained = train_model(cfg, sequences)
    return ChainOutput(sequences, trained, evaluate_run(cfg, trained, sequences.path, progress))


def run_pipeline(cfg: PipelineConfig, progress: bool = True, train_callbacks=()) -> ChainOutput:
    """The whole pipeline without Prefect: prepare; when nothing new arrived since a gated run of
    these settings, stop there (`unchanged`); else train, evaluate and (registry enabled)
    register the window's baselines and the model, and gate. `progress`: the Trainer's and the
    evaluation's console output (off in a flow run, whose `train_callbacks` log instead)."""
    _, sequences, _ = prepare(cfg.data)
    unchanged = nothing_new(cfg, sequences)
    if unchanged:
        return ChainOutput(sequences, None, None, unchanged=unchanged)
    trained = train_model(cfg, sequences, callbacks=train_callbacks, console_progress=progress)
    evaluation = evaluate_run(cfg, trained, sequences.path, progress)
    if not (cfg.registry.enabled and cfg.tracking.enabled):
        return ChainOutput(sequences, trained, evaluation)
    from dataclasses import asdict

    from tasks.registry import gate_model, register_baselines, register_model

    register_baselines(cfg, sequences.path, sequences.fingerprint)
    version = register_model(cfg, trained.summary.get("mlflow_run_id"), trained.model_dir, sequences.path,
                             sequences.fingerprint, evaluation, trained.summary.get("warm_start"))
    decision = gate_model(cfg, version, trained.model_dir, sequences.path)
    return ChainOutput(sequences, trained, evaluation, version, asdict(decision))
