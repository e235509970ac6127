"""The pipeline as plain function calls, for everything that runs it without Prefect (the CLI,
the benchmarks, tests). The Prefect flow (flows/cft.py) calls the very same functions, each as a
task, so there is one chain and one rule for what gets logged:

    prepare (ingest -> validate -> build) -> train -> evaluate_run -> [register_model -> gate_model]

Reuse is decided by each stage's content address alone: a stage whose output folder exists
returns it (`reused`), so a re-run with the same inputs does no work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from schemas.config import PipelineConfig
from tasks.data import StageOutput, prepare
from tasks.evaluation import EvalOutput, evaluate
from tasks.training import TrainOutput, train


def evaluate_run(cfg: PipelineConfig, trained: TrainOutput, sequences: Path, progress: bool = True) -> EvalOutput:
    """Evaluate a trained model and log the result into its training's MLflow run (once per run
    and evaluation folder, see `tasks.tracking.log_evaluation`)."""
    result = evaluate(cfg, trained.model_dir, sequences, progress=progress)
    run_id = trained.summary.get("mlflow_run_id")
    if run_id and cfg.tracking.enabled:
        from tasks.tracking import log_evaluation, tracking_uri

        log_evaluation(result, run_id, tracking_uri(cfg))
    return result


@dataclass(frozen=True)
class ChainOutput:
    sequences: StageOutput
    trained: TrainOutput
    evaluation: EvalOutput


def train_and_evaluate(cfg: PipelineConfig, progress: bool = True) -> ChainOutput:
    """prepare -> train -> evaluate_run, each reused when its inputs are unchanged."""
    _, sequences, _ = prepare(cfg.data)
    trained = train(cfg, sequences.path, sequences.fingerprint)
    return ChainOutput(sequences, trained, evaluate_run(cfg, trained, sequences.path, progress))
