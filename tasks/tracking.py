"""MLflow runs: where they go, what is logged, the Trainer callback for step metrics, the
training run and the evaluation logged into it. (The model registry is tasks/registry/; the
stage modules themselves never call MLflow.)

Only process 0 of a distributed run talks to MLflow. The tracking store defaults to SQLite
under the data root (environment-notes.md: the plain file store is deprecated), and each
experiment keeps its artifacts next to it, never in a stray ./mlruns of the working directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig
from schemas.errors import mlflow_absent, mlflow_refused


def tracking_uri(cfg: PipelineConfig, create: bool = True) -> str:
    """Configured URI, else $MLFLOW_TRACKING_URI, else SQLite under <data_root>/mlflow (its folder
    created unless `create` is False: a command that only reads must not leave an empty store behind)."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = (cfg.data.data_root / "mlflow").resolve()
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local SQLite store URI (sqlite:///<path>), None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def missing_store(uri: str) -> Path | None:
    """The database file of a local SQLite store that does not exist yet, else None. Commands that
    only look things up check this first: opening a missing SQLite store creates an empty one."""
    database = sqlite_file(uri)
    return database if database is not None and not database.is_file() else None


def local_artifact_location(uri: str) -> str | None:
    """Where an experiment in the store at `uri` keeps its artifacts: beside a local SQLite database
    (MLflow's default would be ./mlruns of the working directory); None leaves a server's default."""
    database = sqlite_file(uri)
    return (database.parent / "artifacts").as_uri() if database is not None else None


def experiment_name(cfg: PipelineConfig) -> str:
    return cfg.tracking.experiment or f"cft-{cfg.data.name}"


def use_experiment(cfg: PipelineConfig) -> str:
    """Point mlflow at the store and experiment of `cfg` (created if missing); returns its id."""
    import mlflow

    from tasks.servers import check_artifact_client, check_tracking_server

    uri = tracking_uri(cfg)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    name = experiment_name(cfg)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        try:
            mlflow.create_experiment(name, artifact_location=local_artifact_location(uri))
        except mlflow.exceptions.MlflowException as e:  # (created concurrently: found just below)
            if mlflow_refused(e):
                raise
        exp = mlflow.get_experiment_by_name(name)
    check_artifact_client(exp.artifact_location, uri)
    mlflow.set_experiment(experiment_id=exp.experiment_id)
    return exp.experiment_id


def flatten(payload: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"alpha": 0.1}} -> {"train.alpha": "0.1"} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]  # MLflow's param value limit
    return out


# Trainer log keys -> MLflow metric names
STEP_METRICS = {
    "loss": "train/loss", "normal": "train/normal", "causal": "train/causal",
    "learning_rate": "train/learning_rate", "grad_norm": "train/grad_norm",
    "tokens_per_second": "train/tokens_per_second", "samples_per_second": "train/samples_per_second",
    "eval_loss": "valid/loss", "epoch": "epoch",
}


def step_metrics(logs: dict[str, Any], step: int, timestamp_ms: int) -> list:
    """The MLflow metrics of one Trainer log line (a `log_history` entry) at `step`."""
    from mlflow.entities import Metric

    return [Metric(STEP_METRICS[k], float(v), timestamp_ms, step)
            for k, v in logs.items() if k in STEP_METRICS and isinstance(v, (int, float))]


def step_metrics_callback(run_id: str):
    """A Trainer callback that logs every Trainer log line (loss, normal, causal, lr, throughput,
    eval_loss) to run `run_id` with its step. (transformers is imported only here.)"""
    from transformers import TrainerCallback

    class MLflowStepMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            import time

            from mlflow import MlflowClient

            metrics = step_metrics(logs, state.global_step, int(time.time() * 1000))
            if metrics:
                MlflowClient().log_batch(run_id, metrics=metrics, synchronous=True)

    return MLflowStepMetrics()


def loss_curve_figure(log_history: list[dict[str, Any]]):
    """Matplotlib figure of train loss, its normal and causal terms, and validation loss by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train loss"), ("normal", "train normal L_n"),
                       ("causal", "train causal L_c"), ("eval_loss", "valid loss (weighted L_n)")):
        pts = [(h["step"], h[key]) for h in log_history if key in h]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o" if key == "eval_loss" else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def run_link(cfg: PipelineConfig, run_id: str | None) -> str:
    """Where to see a run: its UI address on a tracking server, else how to open the local store."""
    if not (cfg.tracking.enabled and run_id):  # (a reused training names the run it was tracked in, if any)
        return "(tracking disabled)"
    uri = tracking_uri(cfg)
    from mlflow import MlflowClient

    page = f"#/experiments/{MlflowClient(uri).get_run(run_id).info.experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    # A local store has no UI until one is started on it (on MLflow's default port).
    return f"run {run_id} in {uri}; to see it: mlflow ui --backend-store-uri {uri} --host 127.0.0.1, then http://127.0.0.1:5000/{page}"


# MLflow's conventional dataset contexts, by split (the runs table shows them beside each dataset).
SPLIT_CONTEXTS = {"train": "training", "valid": "validation", "test": "test"}


def split_dataset_inputs(sequences: Path, splits: list[str]):
    """A sequences folder's splits as MLflow dataset inputs of a run (`MlflowClient.log_inputs`):
    the runs table's Datasets column, and its filter, then say which data window a run was
    trained or evaluated on, e.g. `ml-100k-3f2a.../train` (digest: the folder's fingerprint;
    context: training, validation or test). Metadata only: the name, digest, row count, columns
    and the file's local path; no data leaves the data root."""
    import pyarrow.parquet as pq
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types.schema import Array, ColSpec, Schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    def mlflow_type(arrow_type):  # the record tables hold ints, floats, text and lists of them
        import pyarrow as pa

        if pa.types.is_list(arrow_type):
            return Array(mlflow_type(arrow_type.value_type))
        return "long" if pa.types.is_integer(arrow_type) else "double" if pa.types.is_floating(arrow_type) else "string"

    digest = json.loads((sequences / "manifest.json").read_text())["fingerprint"]
    inputs = []
    for split in splits:
        path = (sequences / f"{split}.parquet").resolve()
        meta = pq.ParquetFile(path).metadata
        columns = Schema([ColSpec(mlflow_type(f.type), f.name) for f in meta.schema.to_arrow_schema()])
        # source: what MLflow's own local-file source writes (type "local", {"uri": path})
        dataset = Dataset(name=f"{sequences.name}/{split}", digest=digest, source_type="local",
                          source=json.dumps({"uri": str(path)}), schema=json.dumps({"mlflow_colspec": columns.to_dict()}),
                          profile=json.dumps({"num_rows": meta.num_rows}))
        inputs.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, SPLIT_CONTEXTS[split])]))
    return inputs


def mlflow_metric_name(split: str, key: str) -> str:
    """"grounding_adjusted/NDCG@5" -> "test/grounding_adjusted/NDCG_at_05": MLflow forbids '@',
    and K is zero-padded so that the UI sorts NDCG_at_05 before NDCG_at_10."""
    name, _, k = key.partition("@")
    return f"{split}/{name}_at_{int(k):02d}" if k.isdigit() else f"{split}/{key}"


def log_evaluation(result, run_id: str, tracking_uri: str, sequences: Path) -> bool:
    """Metrics, predictions table and plots of an evaluation (`tasks.evaluation.EvalOutput`) of
    `sequences`' split, and that split as a dataset input, into the training's MLflow run. The
    one rule for every caller (CLI, flow, benchmarks): each evaluation folder is logged once per
    run, whoever asks; returns whether it logged now."""
    import time

    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=tracking_uri)
    split = result.split
    tag = f"cft.evaluation.{split}"
    if client.get_run(run_id).data.tags.get(tag) == result.path.name:
        return False

    now = int(time.time() * 1000)
    # The headline cut-offs as run metrics (one chart each in the UI); every K is in metrics.json.
    from tasks.evaluation import HEADLINE_KS

    headline = {k: v for k, v in result.metrics.items() if int(k.rpartition("@")[2]) in HEADLINE_KS}
    client.log_batch(run_id, metrics=[Metric(mlflow_metric_name(split, k), v, now, 0) for k, v in headline.items()])
    diagnostics = {f"{split}/diagnostics/{k}": v for k, v in result.diagnostics.items() if k != "rows"}
    if diagnostics:  # history effect, target NLL and their interval bounds
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in diagnostics.items()])
    # What each part cost, e.g. test/seconds/constrained (folders from before this have none).
    client.log_batch(run_id, metrics=[Metric(f"{split}/seconds/{part}", t, now, 0) for part, t in result.seconds.items()])
    client.log_artifacts(run_id, str(result.path), artifact_path=f"evaluation/{split}")
    # The per-example predictions also as an MLflow table (shown in the run's Evaluation view).
    preds = pd.read_parquet(result.path / "predictions.parquet")
    for col in preds.columns:  # list columns -> JSON text, which the table format stores as is
        if preds[col].map(lambda v: isinstance(v, (list, np.ndarray))).any():
            preds[col] = preds[col].map(lambda v: json.dumps([x.item() if hasattr(x, "item") else x for x in v]))
    client.log_table(run_id, data=preds, artifact_file=f"evaluation/{split}/predictions_table.json")
    client.log_inputs(run_id, split_dataset_inputs(sequences, [split]))
    client.set_tag(run_id, tag, result.path.name)
    return True


TRAINING_TAG = "cft.training"  # the training folder's name (tasks.training.training_run_dir)
RECORDED_TAG = "cft.recorded_from"  # a training run recorded from training.json (training_run_in_store)


def _active_run(client, run_id: str | None):
    """The run `run_id` of this store if it is not deleted, else None."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException as e:  # RESOURCE_DOES_NOT_EXIST: tracked in another store
        if not mlflow_absent(e):
            raise
        return None
    return run if run.info.lifecycle_stage == "active" else None


RUN_ID_FILE = "mlflow_run_id"  # in a training folder: the id of its run (`TrainingRun`)


def _folder_run(client, run_dir: Path):
    """The run a training folder's `mlflow_run_id` names, if this store has it (not deleted)."""
    id_file = run_dir / RUN_ID_FILE
    return _active_run(client, id_file.read_text().strip() if id_file.is_file() else None)


class TrainingRun:
    """One MLflow run per training (continued on resume), driven from process 0. Its id is kept
    in the training folder (`mlflow_run_id`); a folder whose run is not in this store (tracked
    in another store, or deleted) gets a new one."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, sequences: Path, data_fingerprint: str, source: Path,
                 warm_start: str | None = None):
        import mlflow

        use_experiment(cfg)
        known = _folder_run(mlflow.MlflowClient(tracking_uri(cfg)), run_dir)
        run_id = known.info.run_id if known else None
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{cfg.train.objective}-{run_dir.name}")
        self.run_id = run.info.run_id
        if run_id is None:
            (run_dir / RUN_ID_FILE).write_text(self.run_id)
            mlflow.log_params(flatten(cfg.model_dump(mode="json")))
            mlflow.set_tags({
                "dataset": cfg.data.name, "data_fingerprint": data_fingerprint,
                "model_source": cfg.model.source, "model_folder": str(source),
                "objective": cfg.train.objective, "stage": "train",
                "warm_start": warm_start or "none (from the base model)", TRAINING_TAG: run_dir.name,
            })
            mlflow.MlflowClient(tracking_uri(cfg)).log_inputs(self.run_id, split_dataset_inputs(sequences, ["train", "valid"]))

    def callback(self):
        return step_metrics_callback(self.run_id)

    def finish(self, summary: dict, model_dir: Path) -> None:
        import matplotlib.pyplot as plt
        import mlflow

        fig = loss_curve_figure(summary["log_history"])
        mlflow.log_figure(fig, "plots/loss_curve.png")
        plt.close(fig)
        if summary["best_eval_loss"] is not None:
            mlflow.log_metric("valid/best_loss", summary["best_eval_loss"])
        mlflow.log_dict({k: v for k, v in summary.items() if k != "log_history"}, "training.json")
        if summary["config"]["tracking"]["log_model_folder"]:
            mlflow.log_artifacts(str(model_dir), artifact_path="model_folder")
        mlflow.set_tag("model_dir", str(model_dir.resolve()))
        mlflow.end_run()


def end_stopped_run(error: BaseException) -> None:
    """End the active run of work that stopped with `error` (a training, or the recording of one):
    KILLED when interrupted, else FAILED, the reason in `cft.stopped_by`, so that it is neither
    left RUNNING nor active in a process that goes on (a flow task's retry, a replay's next
    period). A training's resume continues the run. Each call is tried on its own: the store may
    be what failed, and the run must end even when the tag cannot be written."""
    import mlflow

    with contextlib.suppress(Exception):
        mlflow.set_tag("cft.stopped_by", f"{type(error).__name__}: {error}"[:500])
    with contextlib.suppress(Exception):
        mlflow.end_run("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")


def training_run_here(cfg: PipelineConfig, run_dir: Path, summary: dict) -> str | None:
    """The finished training's MLflow run in this store, if it has one: the run its training.json
    names, else a run tagged with its folder (recorded here by `training_run_in_store`)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(cfg))
    if _active_run(client, summary.get("mlflow_run_id")) is not None:
        return summary["mlflow_run_id"]
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, f"tags.`{TRAINING_TAG}` = '{run_dir.name}' and attributes.status = 'FINISHED'",
                               max_results=1) if experiments else []
    return found[0].info.run_id if found else None


def training_run_in_store(cfg: PipelineConfig, run_dir: Path, model_dir: Path, summary: dict, sequences: Path) -> str:
    """The MLflow run, in this store, of a finished training that is being reused (its folder
    `run_dir`, `model_dir`, `summary` = model/training.json, and the `sequences` it trained on).
    A training folder outlives the store it was tracked in: the store was reset, `MLFLOW_TRACKING_URI` now names another one, or
    it trained with tracking off. Its run is then recorded here once, from training.json: the
    parameters and tags a training run has, every logged step's metrics, the loss curve.
    Evaluation, registration and the gate then log into that run as into any other."""
    import time

    import mlflow

    known = training_run_here(cfg, run_dir, summary)
    if known:
        return known
    client = mlflow.MlflowClient(tracking_uri(cfg))
    _drop_half_recording(client, run_dir)
    try:
        run = TrainingRun(cfg, run_dir, sequences, summary["data_fingerprint"], Path(summary["model_source"]),
                          summary["warm_start"])
        mlflow.set_tag(RECORDED_TAG, "training.json: trained while tracking went to another store or was off")
        now = int(time.time() * 1000)
        metrics = [m for entry in summary["log_history"] for m in step_metrics(entry, entry.get("step", 0), now)]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run.run_id, metrics=metrics[start : start + 1000], synchronous=True)
        run.finish({**summary, "mlflow_run_id": run.run_id}, model_dir)
    except BaseException as error:
        end_stopped_run(error)  # (the next call drops the half recording)
        raise
    return run.run_id


def run_left_running(cfg: PipelineConfig, run_dir: Path) -> str | None:
    """The id of a training folder's run when this store still has it RUNNING although no process
    trains it: killed outright (SIGKILL, the OOM killer, a lost machine), so `end_stopped_run` never
    ran. Asked of unfinished trainings that `cft gc` removes."""
    import mlflow

    run = _folder_run(mlflow.MlflowClient(tracking_uri(cfg)), run_dir)
    return run.info.run_id if run is not None and run.info.status == "RUNNING" else None


def end_abandoned_run(cfg: PipelineConfig, run_id: str) -> None:
    """End such a run KILLED, the reason in `cft.stopped_by` (as `end_stopped_run` would have)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(cfg))
    client.set_tag(run_id, "cft.stopped_by", "abandoned: its process ended without ending the run; "
                                             "cft gc removed its checkpoints")
    client.set_terminated(run_id, "KILLED")


def _drop_half_recording(client, run_dir: Path) -> None:
    """Delete a recording of this finished training's run that stopped half-way: the run its
    folder names, in this store and not finished, can be nothing else (the training's own run is
    finished, and a finished recording is found by its tag). Recording it again from the start
    then logs each step once, with every parameter and tag."""
    run = _folder_run(client, run_dir)
    if run is not None and run.info.status != "FINISHED":
        client.delete_run(run.info.run_id)


def log_timeline(cfg: PipelineConfig, timeline: dict, plot: Path) -> str:
    """The timeline into an MLflow run of the dataset's experiment: per-period values as metrics
    (step = period), the JSON and the plot as artifacts. Returns the run id."""
    import mlflow

    use_experiment(cfg)
    with mlflow.start_run(run_name=f"replay-{timeline['settings']['every']}-{timeline['settings']['key']}") as run:
        mlflow.set_tags({"stage": "replay", "dataset": cfg.data.name})
        for step, p in enumerate(timeline["periods"]):
            values = {k: p[k] for k in ("challenger", "champion", "popularity", "markov", "difference")
                      if p.get(k) is not None}
            mlflow.log_metrics({f"replay/{k}": float(v) for k, v in values.items()} |
                               {"replay/interactions": float(p["interactions"]), "replay/seconds": float(p["seconds"])},
                               step=step)
        mlflow.log_dict(timeline, "replay/timeline.json")
        mlflow.log_artifact(str(plot), "replay")
        return run.info.run_id

