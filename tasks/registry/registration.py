"""Logging the recommender into its run and registering it; the popularity and Markov-chain baselines,
once per data window; the signature served models take.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from schemas.config import PipelineConfig
from schemas.errors import mlflow_absent
from tasks.baselines import BASELINES, window_counts
from tasks.registry.champion import set_champion
from tasks.registry.names import (
    CHAMPION,
    KIND_TAG,
    RANKING_KEY_TAG,
    RECOMMENDER_TAG,
    alias_version,
    is_baseline,
    promotion_lock,
    registry_client,
    served_ranking_key,
)
from tasks.tracking import mlflow_metric_name

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "recommender"  # name of the logged pyfunc model inside the run
TASKS = Path(__file__).resolve().parents[1]  # (the served models' files lie beside the stages)
PYFUNC_FILE = TASKS / "recommender_pyfunc.py"


def log_recommender(cfg: PipelineConfig, run_id: str, model_dir: Path, sequences: Path, uri: str) -> str:
    """Log the pyfunc recommender into run `run_id` (once per `served_ranking_key`); returns its
    model URI. It ranks the way the gate measures (`registry.gate_metric`'s method), with the
    run's ranking settings."""
    import tempfile

    import mlflow
    import torch
    import transformers

    import cft_core
    from cft_core.serving import write_counts
    from tasks.evaluation import ensure_catalogue_embeddings
    from tasks.settings import ranking_settings

    client = registry_client(uri)
    logged_as = f"{RECOMMENDER_TAG}.{served_ranking_key(cfg)}"
    if known := client.get_run(run_id).data.tags.get(logged_as):
        return known
    settings = ranking_settings(cfg, cfg.gate_method())
    artifacts = {"model": str(model_dir), "catalogue": str(sequences / "catalogue.parquet")}
    if settings.method == "grounding":
        artifacts["item_embeddings"] = str(ensure_catalogue_embeddings(cfg, model_dir, sequences))
    signature = _signature(cfg)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        if settings.backfill == "popularity":  # the training counts it fills by, as the baselines ship them
            artifacts["popularity"] = write_counts(Path(tmp) / "popularity.json", window_counts(sequences)[0])
        info = _log_pyfunc(
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
        mlflow.set_tag(logged_as, info.model_uri)
    return info.model_uri


def _log_pyfunc(**kwargs):
    """`mlflow.pyfunc.log_model` with a signature and no input example. MLflow warns at every
    call that an example would check the signature; it would do so by loading a second copy of
    the model and predicting, at every registration. The signature is checked by serving instead
    (tests/train/test_serving_http.py), so that one warning is silenced here."""
    import warnings

    import mlflow

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*An input example was not provided")
        return mlflow.pyfunc.log_model(**kwargs)


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
    """Register `model_uri` as a version of `cfg.registered_model_name()`, at most once per run
    and served ranking (`tags[RANKING_KEY_TAG]`, `served_ranking_key`). Returns the ModelVersion
    (the existing one when this run was registered so before)."""

    client = registry_client(uri)
    name = cfg.registered_model_name()
    with promotion_lock(cfg, name):
        existing = [mv for mv in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
                    if mv.tags.get(RANKING_KEY_TAG) == tags.get(RANKING_KEY_TAG)]
        if existing:
            return _wait_ready(client, name, str(existing[0].version))
        _ensure_registered_model(client, cfg, name)
        return _new_version(client, name, model_uri, tags)


def _new_version(client, name: str, model_uri: str, tags: dict[str, str], description: str | None = None):
    """Register a logged model (`models:/m-...`) as a new version and wait until it is READY.
    The fluent call also links the logged model to its version (its `mlflow.modelVersions`
    tag), so the MLflow UI shows the logged model as registered."""
    import mlflow

    from tasks.quiet import mlflow_notices_off

    with mlflow_notices_off():
        mv = mlflow.register_model(model_uri, name, await_registration_for=0, tags=tags)
    if description:
        client.update_model_version(name, str(mv.version), description=description)
    return _wait_ready(client, name, str(mv.version))


def version_tags(cfg: PipelineConfig, data_fingerprint: str, metrics: dict[str, float], split: str,
                 model_dir: Path) -> dict[str, str]:
    """Version tags: what the version is (dataset, data fingerprint, objective, model folder) and
    a handful of headline metrics; every metric is in the run and in the version's model card."""
    from tasks.training import run_fingerprint

    tags = {"dataset": cfg.data.name, "data_fingerprint": data_fingerprint, "objective": cfg.train.objective,
            "model_dir": str(model_dir.resolve()), KIND_TAG: "llm",
            "cft.train_key": run_fingerprint(cfg, data_fingerprint), RANKING_KEY_TAG: served_ranking_key(cfg)}
    served = "constrained" if cfg.gate_method() == "constrained" else "grounding_adjusted"
    for key in (f"{served}/NDCG@10", f"{served}/HR@10", "most_popular/NDCG@10"):
        if key in metrics:
            tags[mlflow_metric_name(split, key)] = f"{metrics[key]:.6g}"
    return tags


def model_card(cfg: PipelineConfig, evaluation, run_id: str, warm_start: str | None = None) -> str:
    """The version's description: a short model card (what it is, the data window, how it was
    trained, its metrics); the gate appends its decision (`gate_card`)."""
    from tasks.evaluation import diagnostics_text, metrics_table

    alpha, beta = cfg.train.loss_settings()
    d = cfg.data
    window = f"as of {d.as_of}" if d.as_of else "all data"
    if d.train_window:
        window += f", last {d.train_window}"
    start = f"warm start from {warm_start}" if warm_start else f"base model `{cfg.model.base_model()}`"
    return "\n".join([
        f"**{cfg.train.objective.upper()}** recommender for `{cfg.data.name}` ({window}): {start}, "
        f"alpha {alpha:g}, beta {beta:g}, serves by `{cfg.gate_method()}` ranking, MLflow run `{run_id}`.", "",
        f"{evaluation.split} split, {evaluation.rows:,} rows, full catalogue:", "",
        metrics_table(evaluation.metrics, cfg.eval.ks), "", diagnostics_text(evaluation.diagnostics)])


def register_model(cfg: PipelineConfig, run_id: str | None, model_dir: Path, sequences: Path,
                   data_fingerprint: str, evaluation, warm_start: str | None = None) -> str:
    """Log the recommender into the training's run and register it (once per run), with its
    headline tags and model card. `evaluation`: the run's `EvalOutput`. Returns the version."""
    if not run_id:
        raise ValueError("registration needs an MLflow run: set tracking.enabled = true")
    from tasks.tracking import tracking_uri

    uri = tracking_uri(cfg)
    model_uri = log_recommender(cfg, run_id, model_dir, sequences, uri)
    tags = version_tags(cfg, data_fingerprint, evaluation.metrics, evaluation.split, model_dir)
    mv = register(cfg, run_id, model_uri, tags, uri)
    registry_client(uri).update_model_version(mv.name, str(mv.version), description=model_card(cfg, evaluation, run_id, warm_start))
    log.info("registered %s version %s", mv.name, mv.version)
    return str(mv.version)
BASELINE_PYFUNCS = {"popularity": TASKS / "popularity_pyfunc.py", "markov": TASKS / "markov_pyfunc.py"}
BASELINE_CARDS = {  # the model card of each kind's versions
    "popularity": "**Popularity baseline**: the catalogue by training frequency in the data window, the same list "
                  "for everyone (history items left out).",
    "markov": "**Markov-chain baseline** (first order): the items seen most often right after the history's "
              "newest item in the data window's training sequences, then the rest by training frequency "
              "(history items left out).",
}


def window_baselines(client, name: str, data_fingerprint: str) -> dict[str, str]:
    """{kind: version} of the baselines registered for the data window `data_fingerprint` (one
    search of the registry; of a kind registered twice, the first found)."""
    found: dict[str, str] = {}
    for mv in client.search_model_versions(f"name='{name}'"):
        if is_baseline(mv) and mv.tags.get("data_fingerprint") == data_fingerprint:
            found.setdefault(mv.tags[KIND_TAG], str(mv.version))
    return found


def register_baselines(cfg: PipelineConfig, sequences: Path, data_fingerprint: str) -> dict[str, str]:
    """Register this data window's baselines, {kind: version}: popularity first (the first
    champion when there is none), then the Markov chain, which the first gate promotes where it
    beats popularity (the floor guards the standing champion). Each once per data fingerprint."""
    return {kind: register_baseline(cfg, sequences, data_fingerprint, kind) for kind in BASELINES}


def register_baseline(cfg: PipelineConfig, sequences: Path, data_fingerprint: str, kind: str) -> str:
    """Register the `kind` baseline of this data window (once per data fingerprint): a pyfunc with
    the LLM recommender's input and output schema (tasks/popularity_pyfunc.py,
    tasks/markov_pyfunc.py), from what `tasks.baselines` counts in the training split. The first
    version registered becomes champion when there is none, so the first champion is never worse
    than a baseline."""
    import tempfile

    import mlflow

    from cft_core.serving import write_counts
    from tasks.tracking import split_dataset_inputs, tracking_uri, use_experiment

    uri = tracking_uri(cfg)
    client, name = registry_client(uri), cfg.registered_model_name()
    with promotion_lock(cfg, name):
        _ensure_registered_model(client, cfg, name)
        if (known := window_baselines(client, name, data_fingerprint).get(kind)) is not None:
            return known
        use_experiment(cfg)
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"{kind}-{data_fingerprint}") as run:
            counts, transitions = window_counts(sequences)
            artifacts = {"catalogue": str(sequences / "catalogue.parquet"),
                         "counts": write_counts(Path(tmp) / "counts.json", counts)}
            if kind == "markov":
                artifacts["transitions"] = str(Path(tmp) / "transitions.npz")
                transitions.save(artifacts["transitions"])
            mlflow.set_tags({"dataset": cfg.data.name, "data_fingerprint": data_fingerprint, "stage": "baseline",
                             KIND_TAG: kind})
            client.log_inputs(run.info.run_id, split_dataset_inputs(sequences, ["train"]))  # what it counted
            info = _log_pyfunc(
                name=MODEL_ARTIFACT, python_model=str(BASELINE_PYFUNCS[kind]), artifacts=artifacts,
                code_paths=[str(TASKS.parent / "cft_core")],
                model_config={"top_k": cfg.registry.top_k}, signature=_signature(cfg),
                pip_requirements=["mlflow", "pandas", "pyarrow", "numpy"],
            )
        mv = _new_version(
            client, name, info.model_uri, {KIND_TAG: kind, "dataset": cfg.data.name, "data_fingerprint": data_fingerprint},
            description=f"{BASELINE_CARDS[kind]} Of `{cfg.data.name}` (data {data_fingerprint}). A floor every LLM "
                        "version must beat.")
        version = str(mv.version)
        if alias_version(client, name, CHAMPION) is None:
            set_champion(client, name, version, "gate", f"first champion: the {kind} baseline of the data window")
        return version


def _ensure_registered_model(client, cfg: PipelineConfig, name: str) -> None:
    import mlflow

    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        if not mlflow_absent(e):
            raise
        client.create_registered_model(name, description=f"CFT recommender for dataset {cfg.data.name}")


def _signature(cfg: PipelineConfig):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec(Array(DataType.string), "history"),
                       ColSpec(Array(DataType.string), "exclude", required=False)]),  # items never to return
        outputs=Schema([ColSpec(Array(DataType.string), "item_ids"), ColSpec(Array(DataType.string), "titles"),
                        ColSpec(Array(DataType.double), "scores"), ColSpec(Array(DataType.string), "unmatched")]),
        params=ParamSchema([ParamSpec("k", DataType.long, cfg.registry.top_k),
                            ParamSpec("exclude_history", DataType.boolean, True),
                            ParamSpec("free_text", DataType.boolean, False)]),
    )


def takes_exclude(model) -> bool:
    """Whether a loaded pyfunc `model` takes the optional `exclude` column (items never to
    return). Versions registered before it drop the column with a warning, as MLflow drops any
    input its signature lacks."""
    inputs = model.metadata.get_input_schema()
    return inputs is not None and "exclude" in inputs.input_names()


def answers_source_ids(model) -> bool:
    """Whether a loaded pyfunc `model` speaks the source's item ids (its signature's `item_ids`
    are text, as `_signature` writes them). Versions registered before that answered with the
    dense ids of their own data window, which name other items in any other window."""
    from mlflow.types import DataType
    from mlflow.types.schema import Array

    outputs = model.metadata.get_output_schema()
    spec = next((c for c in (outputs.inputs if outputs else []) if c.name == "item_ids"), None)
    return spec is None or spec.type == Array(DataType.string)
