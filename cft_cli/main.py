"""The `cft` command line. Heavy imports happen inside commands, so `cft --help` is instant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="CFT recommender pipeline.", no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Data stage: ingest, validate, build sequences.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML profile, e.g. configs/demo.yaml.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a field: section.field=value (repeatable).")]


def _summary(manifest: dict, seq_path: Path, reused: bool) -> Table:
    s = manifest["stats"]
    t = Table(title=f"sequences: {seq_path}" + (" (reused)" if reused else ""))
    for col in ("users", "items", "interactions", "train", "valid", "test", "mean history (train)"):
        t.add_column(col, justify="right")
    t.add_row(*(f"{v:,}" for v in (s["users"], s["items"], s["interactions"], s["samples_train"],
                                   s["samples_valid"], s["samples_test"])), f"{s['mean_history_train']:.2f}")
    return t


@data_app.command("prepare")
def data_prepare(config: ConfigOpt = Path("configs/demo.yaml"), set_: SetOpt = None) -> None:
    """Ingest the configured source, validate it, and build train/valid/test records."""
    from schemas.config import load_config
    from schemas.errors import DataError
    from tasks.data import prepare

    cfg = load_config(config, set_).data
    try:
        ingested, sequences, manifest = prepare(cfg)
    except DataError as e:
        console.print(f"[red]data error:[/red] {e}")
        raise typer.Exit(2) from None
    console.print(f"ingested: {ingested.path}" + (" (reused)" if ingested.reused else ""))
    console.print(_summary(manifest, sequences.path, sequences.reused))


def _prepare_data(cfg):
    from schemas.errors import DataError
    from tasks.data import prepare

    try:
        return prepare(cfg.data)
    except DataError as e:
        console.print(f"[red]data error:[/red] {e}")
        raise typer.Exit(2) from None


@app.command("train")
def train(config: ConfigOpt = Path("configs/demo.yaml"), set_: SetOpt = None) -> None:
    """Prepare the data (reused when unchanged) and fine-tune the model with the configured objective.

    Multi-process: `torchrun --nproc_per_node N --master_addr 127.0.0.1 -m cft_cli train -c ...`.
    """
    from schemas.config import load_config
    from tasks.training import is_rank_zero
    from tasks.training import train as train_stage

    cfg = load_config(config, set_)
    _, sequences, _ = _prepare_data(cfg)
    out = train_stage(cfg, sequences.path, sequences.fingerprint)
    if is_rank_zero():
        s = out.summary
        t = Table(title="training" + (" (reused)" if out.reused else ""))
        for col in ("objective", "steps", "best valid loss", "MLflow run", "model"):
            t.add_column(col)
        best = s["best_eval_loss"]
        t.add_row(cfg.train.objective, str(s["global_step"]), "-" if best is None else f"{best:.4f}",
                  str(s["mlflow_run_id"]), str(out.model_dir))
        console.print(t)


@app.command("evaluate")
def evaluate(
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model folder; default: the one `cft train` makes for this config.")] = None,
) -> None:
    """Evaluate a model folder on the configured split: HR/NDCG@K over the full catalogue."""
    from schemas.config import load_config
    from tasks.evaluation import evaluate as evaluate_stage
    from tasks.evaluation import log_to_mlflow
    from tasks.tracking import tracking_uri
    from tasks.training import train as train_stage

    cfg = load_config(config, set_)
    _, sequences, _ = _prepare_data(cfg)
    run_id = None
    if model_dir is None:  # train (or reuse the finished training of) this config
        trained = train_stage(cfg, sequences.path, sequences.fingerprint)
        model_dir, run_id = trained.model_dir, trained.summary.get("mlflow_run_id")
    result = evaluate_stage(cfg, model_dir, sequences.path)
    if run_id and cfg.tracking.enabled and not result.reused:
        log_to_mlflow(result, run_id, tracking_uri(cfg))
    ks = [k for k in (5, 10, 20) if k in cfg.eval.ks]
    t = Table(title=f"{cfg.eval.split} metrics: {result.path}" + (" (reused)" if result.reused else ""))
    t.add_column("method")
    for k in ks:
        t.add_column(f"HR@{k}", justify="right")
        t.add_column(f"NDCG@{k}", justify="right")
    for method in sorted({m.split("/")[0] for m in result.metrics}):
        t.add_row(method, *(f"{result.metrics[f'{method}/{n}@{k}']:.4f}" for k in ks for n in ("HR", "NDCG")))
    console.print(t)


@app.command("run")
def run(config: ConfigOpt = Path("configs/demo.yaml"), set_: SetOpt = None) -> None:
    """The whole job in-process: prepare data -> train -> evaluate (each stage reused when done).

    Prints where the results are. (The Prefect flow and the registry gate wrap these same stages.)
    """
    from schemas.config import load_config
    from tasks.tracking import tracking_uri

    data_prepare(config, set_)
    evaluate(config, set_, None)
    cfg = load_config(config, set_)
    if cfg.tracking.enabled:
        console.print(f"MLflow store: {tracking_uri(cfg)}\n"
                      f"UI: mlflow ui --backend-store-uri {tracking_uri(cfg)} --host 127.0.0.1")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
