"""The stages as Prefect tasks: retries, logging and artifacts, nothing else.

Each task calls one plain stage function (tasks/data.py, training.py, chain.py, registry/),
so everything here can also run without Prefect (tasks/chain.py). There is no Prefect result
cache: a stage's content-addressed output folder decides whether work is reused, the same way
with or without Prefect, so a re-run with the same inputs reuses every stage and a deleted
output folder is simply rebuilt.

- retries where failures are transient (reading a source, MLflow registry calls), never for bad
  data or a bad config: those fail the flow at once with the stage's message;
- artifacts: the validation summary, the metrics table with a link to the MLflow run;
- the stage modules' warnings (`tasks.*`: rows dropped, items with several titles, a training
  waiting for another) in the run's log, which the Prefect UI shows (`stage_warnings_to_run_log`).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import DataConfig, PipelineConfig
from schemas.errors import DataError
from tasks.data import StageOutput
from tasks.evaluation import EvalOutput
from tasks.training import TrainOutput

_INPUT_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError)  # and `input_error_message`'s (transient_only)


def _in_a_run(record: logging.LogRecord) -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def stage_warnings_to_run_log() -> None:
    """Send the warnings of the stage modules (the `tasks` loggers) to the log of the flow or task
    run they happen in, as Prefect's `PREFECT_LOGGING_EXTRA_LOGGERS=tasks` would, but without
    relying on every worker's environment. Outside a run they go only where they went before (the
    console, a worker's log). Once per process (the flows import this module)."""
    from prefect.logging.handlers import APILogHandler

    stages = logging.getLogger("tasks")
    if any(isinstance(h, APILogHandler) for h in stages.handlers):
        return
    handler = APILogHandler(level=logging.WARNING)
    handler.addFilter(_in_a_run)
    stages.addHandler(handler)


stage_warnings_to_run_log()


def transient_only(task, task_run, state) -> bool:
    """retry_condition_fn: retry unless the error is about the input (bad data, config, a registry
    reference that does not resolve: `schemas.errors.input_error_message`, as the CLI sorts them)."""
    from schemas.errors import input_error_message

    try:
        state.result()
    except BaseException as e:  # noqa: BLE001 (sorted just below)
        return not (isinstance(e, _INPUT_ERRORS) or input_error_message(e) is not None)
    return False


def artifact_slug(text: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _reused(what: str, out) -> None:
    get_run_logger().info("%s: %s%s", what, getattr(out, "path", None) or out.model_dir,
                          " (reused: same inputs as a finished run)" if out.reused else "")


# ------------------------------------------------------------------------------ data


@task(name="ingest", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient_only)
def ingest_task(cfg: DataConfig) -> StageOutput:
    """Read the source into interactions/items Parquet tables."""
    from tasks.data import ingest

    out = ingest(cfg)
    _reused("ingested", out)
    return out


@task(name="validate", cache_policy=NO_CACHE)
def validate_task(ingested: StageOutput, cfg: DataConfig) -> dict:
    """Great Expectations suites on the ingested tables; publishes the summary as an artifact.
    A critical failure raises DataValidationError with every failed expectation."""
    from tasks.data import validate_ingested

    try:
        report = validate_ingested(ingested.path, cfg)
    except DataError as e:
        if getattr(e, "report", None):
            _validation_artifact(cfg.name, e.report)
        raise
    _validation_artifact(cfg.name, report)
    return {"success": report["success"], "warnings": len(report["warnings"]), "checked": len(report["results"])}


def _validation_artifact(dataset: str, report: dict) -> None:
    rows = ["| table | column | expectation | result | unexpected |", "|---|---|---|---|---|"]
    for r in report["results"]:
        result = "ok" if r["success"] else ("FAILED" if r["severity"] == "critical" else "warning")
        rows.append(f"| {r['table']} | {r['column']} | {r['expectation']} | {result} | {r['unexpected_count'] or ''} |")
    head = (f"**{report['what']}**: {'passed' if report['success'] else 'FAILED'} "
            f"({len(report['failures'])} failed, {len(report['warnings'])} warnings)\n\n")
    create_markdown_artifact(head + "\n".join(rows), key=f"validation-{artifact_slug(dataset)}",
                             description="Great Expectations validation of the ingested tables")


@task(name="build-sequences", cache_policy=NO_CACHE)
def build_sequences_task(ingested: StageOutput, cfg: DataConfig) -> StageOutput:
    """D3-style behaviour sequences -> train/valid/test records + catalogue (validated too)."""
    from tasks.data import build_sequences

    out = build_sequences(ingested, cfg)
    _reused("sequences", out)
    return out


# ------------------------------------------------------------------------------ train + evaluate


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: PipelineConfig, sequences: StageOutput) -> TrainOutput:
    """Fine-tune with the configured objective (CFT by default) under DeepSpeed, from the champion
    with `model.source: champion`; resumes from the last checkpoint of an interrupted attempt."""
    from tasks.chain import train_model

    out = train_model(cfg, sequences, callbacks=[training_log()], console_progress=False)
    _reused("model", out)
    return out


def training_log():
    """A Trainer callback that writes each Trainer log entry into the task run's log ("step 4/8:
    loss 3.362 (normal 2.561, causal 9.719), lr 6.67e-05, ..."), so the Prefect UI shows the
    training as it goes; it replaces the Trainer's own bar and printed entries."""
    from transformers import TrainerCallback

    from tasks.training import log_line

    logger = get_run_logger()

    class TaskRunLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            line = log_line(logs or {}) if state.is_world_process_zero else None
            if line:
                logger.info("step %d/%d: %s", state.global_step, state.max_steps, line)

    return TaskRunLog()


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cfg: PipelineConfig, trained: TrainOutput, sequences: StageOutput) -> EvalOutput:
    """HR/NDCG@K over the full catalogue on `cfg.eval.split`, logged to the training's MLflow run."""
    from tasks.chain import evaluate_run

    out = evaluate_run(cfg, trained, sequences.path)
    _reused("evaluation", out)
    return out


# ------------------------------------------------------------------------------ register + gate

_REGISTRY_RETRIES: dict[str, Any] = {"retries": 3, "retry_delay_seconds": [2, 10, 30],
                                     "retry_condition_fn": transient_only}


@task(name="check-new-data", cache_policy=NO_CACHE, **_REGISTRY_RETRIES)
def nothing_new_task(cfg: PipelineConfig, sequences: StageOutput) -> str | None:
    """The "no new interactions since ...; champion unchanged" message when a version trained on
    these rows with these settings was gated already, else None."""
    from tasks.chain import nothing_new

    return nothing_new(cfg, sequences)


@task(name="register-baselines", cache_policy=NO_CACHE, **_REGISTRY_RETRIES)
def register_baselines_task(cfg: PipelineConfig, sequences: StageOutput) -> dict[str, str]:
    """This data window's popularity and Markov-chain baselines as registered versions, {kind:
    version} (popularity: the first champion)."""
    from tasks.registry import register_baselines

    return register_baselines(cfg, sequences.path, sequences.fingerprint)


@task(name="register", cache_policy=NO_CACHE, **_REGISTRY_RETRIES)
def register_task(cfg: PipelineConfig, trained: TrainOutput, sequences: StageOutput, evaluation: EvalOutput) -> str:
    """Log the pyfunc recommender into the run and register it (once per run); the version."""
    from tasks.registry import register_model

    return register_model(cfg, trained.summary.get("mlflow_run_id"), trained.model_dir, sequences.path,
                          sequences.fingerprint, evaluation, trained.summary.get("warm_start"))


@task(name="gate", tags=["cft-promotion"], cache_policy=NO_CACHE, **_REGISTRY_RETRIES)
def gate_task(cfg: PipelineConfig, version: str, trained: TrainOutput, sequences: StageOutput) -> dict:
    """Champion/challenger on the gate split. Tagged `cft-promotion`, which the stack limits to
    one running task (serialised promotions across workers)."""
    from dataclasses import asdict

    from tasks.registry import gate_model

    decision = gate_model(cfg, version, trained.model_dir, sequences.path)
    get_run_logger().info("gate: %s", decision.reason)
    if decision.floor_promoted:
        get_run_logger().info("gate: v%s (a baseline) is champion: %s", decision.floor_promoted,
                              decision.floor_reason)
    return asdict(decision)


def metrics_summary(cfg: PipelineConfig, evaluation: EvalOutput | None, run_id: str | None, decision: dict | None,
                    unchanged: str | None = None) -> str:
    """Markdown: HR/NDCG@{5,10,20} per method, the diagnostics, the evaluation's seconds, the
    MLflow run, and the gate's decision (or why nothing was trained)."""
    from tasks.evaluation import diagnostics_text, metrics_table, seconds_text
    from tasks.tracking import run_link

    if unchanged:
        return f"### {cfg.data.name}: nothing new\n\n{unchanged}"
    lines = [f"### {cfg.data.name}: {cfg.train.objective}, {evaluation.split} split", "",
             metrics_table(evaluation.metrics, cfg.eval.ks), "", diagnostics_text(evaluation.diagnostics), "",
             seconds_text(evaluation.seconds), "", f"MLflow run: {run_link(cfg, run_id)}"]
    if decision:
        from tasks.registry import GateDecision, gate_card

        lines += ["", f"Registry: {cfg.registered_model_name()} v{decision['version']}: "
                      f"{'champion' if decision['promoted'] else 'challenger'} ({decision['reason']})", "",
                  gate_card(cfg, GateDecision(**decision))]
    return "\n".join(lines)


def metrics_artifact(text: str, cfg: PipelineConfig) -> None:
    create_markdown_artifact(text, key=f"metrics-{artifact_slug(cfg.data.name)}", description="CFT evaluation metrics")
