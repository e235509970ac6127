"""MLflow glue: where runs go, what is logged, and a Trainer callback for step metrics.

Only process 0 of a distributed run talks to MLflow. The tracking store defaults to SQLite
under the data root (environment-notes.md: the plain file store is deprecated), and each
experiment keeps its artifacts next to it, never in a stray ./mlruns of the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from schemas.config import PipelineConfig


def tracking_uri(cfg: PipelineConfig) -> str:
    """Configured URI, else $MLFLOW_TRACKING_URI, else SQLite under <data_root>/mlflow."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = (cfg.data.data_root / "mlflow").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def experiment_name(cfg: PipelineConfig) -> str:
    return cfg.tracking.experiment or f"cft-{cfg.data.name}"


def use_experiment(cfg: PipelineConfig) -> str:
    """Point mlflow at the store and experiment of `cfg` (created if missing); returns its id."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    name = experiment_name(cfg)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):  # local store: artifacts beside the database
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    try:
        exp_id = mlflow.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:  # created concurrently
        exp_id = mlflow.get_experiment_by_name(name).experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


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


class MLflowStepMetrics(TrainerCallback):
    """Logs every Trainer log line (loss, normal, causal, lr, throughput, eval_loss) with its step."""

    KEYS = {
        "loss": "train/loss", "normal": "train/normal", "causal": "train/causal",
        "learning_rate": "train/learning_rate", "grad_norm": "train/grad_norm",
        "tokens_per_second": "train/tokens_per_second", "samples_per_second": "train/samples_per_second",
        "eval_loss": "valid/loss", "epoch": "epoch",
    }

    def __init__(self, run_id: str):
        self.run_id = run_id

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        import time

        from mlflow import MlflowClient
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(self.KEYS[k], float(v), now, state.global_step)
            for k, v in logs.items() if k in self.KEYS and isinstance(v, (int, float))
        ]
        if metrics:
            MlflowClient().log_batch(self.run_id, metrics=metrics, synchronous=True)


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
    uri = tracking_uri(cfg)
    if not run_id:
        return "(tracking disabled)"
    if uri.startswith(("http://", "https://")):
        from mlflow import MlflowClient

        exp = MlflowClient(uri).get_run(run_id).info.experiment_id
        return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
    return f"run {run_id} in {uri} (UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1)"
