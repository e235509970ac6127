"""Register stage: the baselines, the recommender, and the champion/challenger gate.

    data window --register_baselines---> a popularity and a Markov-chain baseline version (once
                                         per data window); popularity is the first champion
    evaluated run --log_recommender----> pyfunc model in the run (models-from-code)
                  --register_model-----> version N of `cft-<dataset>` (once per run), model card
                  --gate_model---------> on the same newest rows: N vs the champion (as it
                                         serves: its own catalogue and settings) vs this
                                         window's baselines; `champion` moves to N only if N
                                         beats the champion by the margin AND each baseline (the
                                         floor); else the best baseline that beats the champion
                                         becomes champion

Aliases, not the deprecated stages, carry the roles (environment-notes.md). Every change of the
champion (gate, `cft promote`, `cft rollback`) is appended to the registered model's
`champion_history` tag with its reason, and runs under a per-model file lock so two promotions
never interleave; on a team stack the flow's promote task is also limited to one at a time by a
Prefect concurrency limit (prefect.yaml).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from cft_core.serving import write_counts
from schemas.config import PipelineConfig
from schemas.errors import InputError, RegistryError
from tasks.baselines import BASELINES, EVALUATION_NAMES, window_counts
from tasks.storage import fingerprint
from tasks.tracking import missing_store, mlflow_metric_name

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ARTIFACT = "recommender"  # name of the logged pyfunc model inside the run
PYFUNC_FILE = Path(__file__).with_name("recommender_pyfunc.py")
HISTORY_TAG = "champion_history"


# A registered version as users name it: models:/cft-ml-100k/3 or models:/cft-ml-100k@champion.
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[^/@]+))$")


def champion_uri(cfg: PipelineConfig) -> str:
    """What serving and batch use by default: the champion of `cft-<data.name>`."""
    return f"models:/{cfg.registered_model_name()}@{CHAMPION}"


def registered_version(client, uri: str):
    """The ModelVersion a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI names now (MLflow's
    exception when it names none); None for any other URI (a run's or a folder's)."""
    match = MODEL_URI.match(uri)
    if match is None:
        return None
    if match["version"]:
        return client.get_model_version(match["name"], match["version"])
    return client.get_model_version_by_alias(match["name"], match["alias"])


def llm_version(uri: str, tracking_uri: str):
    """The LLM ModelVersion a person named (models:/NAME/VERSION or models:/NAME@ALIAS) in the
    store at `tracking_uri`; InputError naming what is wrong (not such a URI, no store, no such
    version, a baseline, which has no model folder or evaluation of its own)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if MODEL_URI.match(uri) is None:
        raise InputError(f"{uri}: a registered version is models:/NAME/VERSION or models:/NAME@ALIAS")
    if (store := missing_store(tracking_uri)) is not None:
        raise InputError(f"{uri}: there is no tracking store at {store}, so no registry")
    try:
        version = registered_version(MlflowClient(tracking_uri, registry_uri=tracking_uri), uri)
    except MlflowException:
        raise InputError(f"{uri} is not in the registry at {tracking_uri}") from None
    if is_baseline(version):
        raise InputError(f"{uri} is version {version.version}, a {version.tags[KIND_TAG]} baseline: it has no model "
                         "or evaluation of its own (each evaluation's table has the most_popular and markov rows, "
                         "and the gate compares with them)")
    return version


def registry_client(uri: str):
    """A client of the store at `uri`, with MLflow's global tracking and registry URIs pointed at
    it too (`models:/` URIs resolve through the global registry URI). A server that does not answer
    is named at once (`tasks.servers`)."""
    import mlflow
    from mlflow import MlflowClient

    from tasks.servers import check_tracking_server

    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, registry_uri=uri)


def promotion_lock(cfg: PipelineConfig, name: str) -> FileLock:
    """One promotion at a time per registered model (on this data root)."""
    path = cfg.data.data_root / "registry" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, timeout=600)


# ------------------------------------------------------------------------------ log + register


# A run tag per served ranking (`served_ranking_key`): the logged recommender of that ranking.
RECOMMENDER_TAG = "cft.recommender_uri"
RANKING_KEY_TAG = "cft.ranking_key"  # version tag: the served ranking's key


def served_ranking_key(cfg: PipelineConfig) -> str:
    """What an LLM version ranks with besides its training's model and catalogue: the ranking
    settings of the gate's method (beams, `eval.backfill`, precision, ...; not the batch size, which
    the server sets), the prompts' domain and the default k. A training run is registered once per
    key (`register`), so a change of them (e.g. `eval.constrained_search_beams`, which the README
    advises for serving) registers the same training anew, to be gated, where it once said "nothing
    new"; and a version registered before the key existed counts as another ranking."""
    from tasks.settings import ranking_settings

    ranking = ranking_settings(cfg, cfg.gate_method()).to_dict()
    ranking["generation"].pop("batch_size")
    return fingerprint({"ranking": ranking, "domain": cfg.data.domain, "top_k": cfg.registry.top_k})


def log_recommender(cfg: PipelineConfig, run_id: str, model_dir: Path, sequences: Path, uri: str) -> str:
    """Log the pyfunc recommender into run `run_id` (once per `served_ranking_key`); returns its
    model URI. It ranks the way the gate measures (`registry.gate_metric`'s method), with the
    run's ranking settings."""
    import tempfile

    import mlflow
    import torch
    import transformers

    import cft_core
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


# ------------------------------------------------------------------------------ baselines

KIND_TAG = "cft.kind"  # "llm", or a baseline's kind: "popularity", "markov" (tasks.baselines.BASELINES)
BASELINE_PYFUNCS = {"popularity": Path(__file__).with_name("popularity_pyfunc.py"),
                    "markov": Path(__file__).with_name("markov_pyfunc.py")}
BASELINE_CARDS = {  # the model card of each kind's versions
    "popularity": "**Popularity baseline**: the catalogue by training frequency in the data window, the same list "
                  "for everyone (history items left out).",
    "markov": "**Markov-chain baseline** (first order): the items seen most often right after the history's "
              "newest item in the data window's training sequences, then the rest by training frequency "
              "(history items left out).",
}


def is_baseline(version) -> bool:
    """Whether a registered ModelVersion is a data window's baseline (no model folder, no evaluation)."""
    return version.tags.get(KIND_TAG) in BASELINES


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
                code_paths=[str(Path(__file__).resolve().parents[1] / "cft_core")],
                model_config={"top_k": cfg.registry.top_k}, signature=_signature(cfg),
                pip_requirements=["mlflow", "pandas", "pyarrow", "numpy"],
            )
        mv = _new_version(
            client, name, info.model_uri, {KIND_TAG: kind, "dataset": cfg.data.name, "data_fingerprint": data_fingerprint},
            description=f"{BASELINE_CARDS[kind]} Of `{cfg.data.name}` (data {data_fingerprint}). A floor every LLM "
                        "version must beat.")
        version = str(mv.version)
        if _alias_version(client, name, CHAMPION) is None:
            _set_champion(client, name, version, "gate", f"first champion: the {kind} baseline of the data window")
        return version


def _ensure_registered_model(client, cfg: PipelineConfig, name: str) -> None:
    import mlflow

    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
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


# ------------------------------------------------------------------------------ gate


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for `version`, on `rows` gate rows (fingerprint `rows_fingerprint`):
    the mean metric of the challenger, the champion and the floor's baselines (popularity, the
    Markov chain) on those rows, and the paired difference challenger - champion with its
    bootstrap interval."""

    version: str
    promoted: bool
    reason: str
    metric: str
    rows: int
    rows_fingerprint: str
    challenger_value: float
    champion_version: str | None
    champion_value: float | None
    popularity_value: float
    difference: float
    ci_low: float
    ci_high: float
    # The floor guards the standing champion too: when the challenger is not promoted and one of
    # this window's baselines beats the champion (the same rule and margin), that baseline version
    # becomes champion; its version and why.
    floor_promoted: str | None = None
    floor_reason: str | None = None
    markov_value: float | None = None  # (None in decisions recorded before the Markov floor)


def decide(ours, champion, floors: dict | None, margin: float, rule: str,
           level: float = 0.95) -> tuple[bool, str, tuple]:
    """The gate rule on per-row metric values of the same rows (float[B] each).

    Promote iff the challenger beats the champion by more than `margin` (rule `point`: the mean
    paired difference; rule `ci`: the lower bound of its bootstrap interval) AND, when `floors`
    ({baseline kind: values}) are given, beats each of them the same way with margin 0. Returns
    (promoted, reason, (difference, low, high)).
    """
    import numpy as np

    from cft_core.metrics import paired_bootstrap_ci

    ours = np.asarray(ours, dtype=float)
    diff = paired_bootstrap_ci(ours, np.asarray(champion, dtype=float), level)
    clears = (diff[1] if rule == "ci" else diff[0]) > margin
    what = "lower bound" if rule == "ci" else "mean difference"
    interval = f"{diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}]"
    if not clears:
        return False, f"does not beat the champion: {what} of {interval} is not above the margin {margin:g}", diff
    for kind, floor in (floors or {}).items():
        over = paired_bootstrap_ci(ours, np.asarray(floor, dtype=float), level)
        if not (over[1] if rule == "ci" else over[0]) > 0:
            return False, (f"beats the champion ({interval}) but not the {kind} floor: "
                           f"{over[0]:+.4f} [{over[1]:+.4f}, {over[2]:+.4f}]"), diff
    beaten = " and the " + " and ".join(floors) + " floor" + ("s" if len(floors) > 1 else "") if floors else ""
    return True, f"beats the champion by {interval} (margin {margin:g}){beaten}", diff


def _history(client, name: str) -> list[dict]:
    return champion_history(client.get_registered_model(name))


def champion_history(model) -> list[dict]:
    """A RegisteredModel's changes of champion, oldest first: {version, action, reason, by, at} and,
    for one asked through a flow run, via (`_set_champion`)."""
    return json.loads(model.tags.get(HISTORY_TAG, "[]"))


# A registry tag holds 5,000 characters on a SQL store (MLflow's own check allows 100,000, so
# SQLite takes more and PostgreSQL refuses it), and `champion_history` keeps its newest entries within
# HISTORY_MAX_CHARS. A person's reason is checked against REASON_MAX_CHARS before anything moves.
HISTORY_MAX_CHARS, REASON_MAX_CHARS = 4800, 1000
BY_MAX_CHARS = 200  # who asked: a name or an address


def check_reason(reason: str, what: str) -> None:
    """InputError for a reason that is empty or longer than REASON_MAX_CHARS."""
    if not reason.strip():
        raise InputError(f"{what} needs a reason (`--reason`, the flow's `reason`)")
    if len(reason) > REASON_MAX_CHARS:
        raise InputError(f"the reason is {len(reason):,} characters long; at most {REASON_MAX_CHARS:,} (a line or two: "
                         "it is kept in the registry's champion_history tag, which holds 5,000)")


def _who() -> str:
    """Who moves the champion: the login name, or the uid where the user has none (a container run
    as an arbitrary uid without a passwd entry, where getpass raises)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def check_by(by: str | None) -> None:
    """InputError for a `by` (who asks for a promotion or rollback) that is blank or too long."""
    if by is not None and (not by.strip() or len(by) > BY_MAX_CHARS):
        raise InputError(f"`by` names who asks, in at most {BY_MAX_CHARS} characters (a name or an address); "
                         f"got {by[:40]!r}{'...' if len(by) > 40 else ''}")


def _set_champion(client, name: str, version: str, action: str, reason: str, by: str | None = None,
                  via: str | None = None) -> None:
    """Move the champion alias to `version` and append the change to `champion_history`: what,
    why, by whom (`by`, else this process's user) and, for a change asked through a flow run, via
    which (`via`: the process's user is then the worker's, not the person's)."""
    history = _history(client, name)
    entry = {"version": str(version), "action": action, "reason": reason, "by": by or _who(),
             "at": datetime.now(UTC).isoformat(timespec="seconds")}
    if via:
        entry["via"] = via if by else f"{via}, whose user this is"
    history.append(entry)
    text = json.dumps(history)  # (written in full before the alias moves: nothing half-done)
    while len(text) > HISTORY_MAX_CHARS and len(history) > 1:
        history = history[1:]
        text = json.dumps(history)
    if len(text) > HISTORY_MAX_CHARS:  # one entry: the reason's check keeps it far below
        raise RegistryError(f"champion_history entry of {len(text):,} characters: {text[:200]}...")
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, text)
    client.set_model_version_tag(name, str(version), "champion.reason", reason)


def _alias_version(client, name: str, alias: str) -> str | None:
    import mlflow

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def _gate_rows(cfg: PipelineConfig, model_dir: Path, sequences: Path):
    """(per-row ranks of `model_dir` by the gate's method, {baseline kind: per-row ranks of this
    window's baseline}, the rows' predictions table): `evaluate` on the gate split."""
    import pandas as pd

    from tasks.evaluation import evaluate

    gate_cfg = cfg.model_copy(update={"eval": cfg.gate_eval()})
    result = evaluate(gate_cfg, model_dir, sequences, progress=False)
    preds = pd.read_parquet(result.path / "predictions.parquet")
    method = cfg.registry.gate_metric.split("/")[0]
    # (The evaluation ranks each baseline as its registered version serves.)
    floors = {kind: preds[f"{column}_rank"].to_numpy() for kind, column in EVALUATION_NAMES.items()}
    return preds[f"{method}_rank"].to_numpy(), floors, preds


def artifacts_read_in_place(uri: str) -> bool:
    """Whether MLflow reads the model at `uri` where it is stored (a local folder store: the
    default SQLite set-up) rather than downloading it (an MLflow server's proxied store, S3)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    try:
        repo = get_artifact_repository(uri)
    except Exception:  # noqa: BLE001 (an unknown scheme: let the download say what is wrong)
        return False
    while hasattr(repo, "repo"):  # models:/ and runs:/ wrap the store's own repository
        repo = repo.repo
    return isinstance(repo, LocalArtifactRepository)


class LoadedPyfunc:
    """A registered model's pyfunc, loaded, with what it holds until `close()` (or the end of a
    `with` block): an LLM version's batching worker, whose thread would otherwise keep the model
    in memory for the life of the process, and the download of a model that is not read in place
    (`artifacts_read_in_place`), into a temporary folder that close() removes. (MLflow's own
    download folder would stay in the temporary directory for good: a copy of the model at every
    load, by a server following its alias, a nightly batch, every gate.) Every command that ranks
    with a registered model loads it through here.

    pyfunc: the `mlflow.pyfunc.PyFuncModel` (predict, metadata); model: its Python model
    (tasks/recommender_pyfunc.py or a baseline's pyfunc, or an older stored copy)."""

    def __init__(self, uri: str):
        import shutil
        import tempfile

        import mlflow

        self.uri = uri
        self.download = None if artifacts_read_in_place(uri) else Path(tempfile.mkdtemp(prefix="cft-model-"))
        try:
            self.pyfunc = mlflow.pyfunc.load_model(uri, dst_path=None if self.download is None else str(self.download))
        except BaseException:
            if self.download is not None:
                shutil.rmtree(self.download, ignore_errors=True)
            raise
        self.model = self.pyfunc.unwrap_python_model()

    @property
    def batching(self):
        """The LLM recommender's `BatchingRecommender`; None for a baseline."""
        return getattr(self.model, "recommender", None)

    def close(self) -> None:
        """End the batching worker (after the requests it holds are answered), then remove the
        download. The weights already in memory stay usable while references remain."""
        import shutil

        if self.batching is not None:
            self.batching.close()
        if self.download is not None:
            shutil.rmtree(self.download, ignore_errors=True)

    def __enter__(self) -> LoadedPyfunc:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _served_ranks(cfg: PipelineConfig, mv, preds, sequences: Path, rows_fp: str):
    """First-hit ranks [B] on the gate rows (`preds`, as `_gate_rows` read them) of the registered
    version `mv` as it serves: through its own pyfunc, so with its own catalogue, ranking settings
    and model (an LLM's or a baseline's counts), not this window's.

    Each row's history goes in as a client sends it, the source's item ids: those the version's
    catalogue lacks (items newer than it) are left out of the prompt, as serving leaves them out,
    and an item renamed since is shown under the name it had. The history is not excluded from
    the answers (the evaluation does not exclude it either). The answers, the gate metric's K of
    them, are mapped to this window's catalogue by source item id, so an item the version does
    not know is never its hit: a standing champion is judged on what it would recommend, not on
    what a model ranking this window's catalogue could. (A version registered before served
    models spoke the source's ids takes and gives titles here.) Kept under
    <data_root>/registry/gate per version and gate rows, so that gating several challengers on
    one window ranks the champion once."""
    import numpy as np
    import pandas as pd

    from cft_core.metrics import first_hit_ranks, title_ids
    from cft_core.ranking import served_catalogue
    from tasks.evaluation import EVALUATION_VERSION
    from tasks.storage import atomic_dir, with_code_versions

    k = int(cfg.registry.gate_metric.split("@")[1])
    key = fingerprint(with_code_versions({"version": [mv.name, str(mv.version), mv.run_id, mv.creation_timestamp],
                                          "rows": rows_fp, "k": k}, evaluation=EVALUATION_VERSION))
    cache = cfg.data.data_root / "registry" / "gate" / f"{mv.name}-v{mv.version}-{key}"
    if (cache / "ranks.json").is_file():
        return np.asarray(json.loads((cache / "ranks.json").read_text()), dtype=np.int64)
    source_ids, titles = served_catalogue(sequences / "catalogue.parquet")  # row = this window's dense item id
    tid, table = title_ids(titles)  # hits by title, as the evaluation counts them (duplicates share)
    with LoadedPyfunc(f"models:/{mv.name}/{mv.version}") as loaded:
        by_id = answers_source_ids(loaded.pyfunc)
        histories = ([[source_ids[i] for i in h] for h in preds["history_item_ids"]] if by_id
                     else [list(h) for h in preds["history_titles"]])
        size = len(loaded.model.catalogue)
        answers = loaded.pyfunc.predict(pd.DataFrame({"history": histories}),
                                        params={"k": min(k, size), "exclude_history": False})
    if by_id:
        tid_of = dict(zip(source_ids, tid.tolist(), strict=True))
        ranked = [[tid_of.get(str(i), -1) for i in ids] for ids in answers["item_ids"]]
    else:
        ranked = [[table.get(t, -1) for t in row] for row in answers["titles"]]
    padded = np.full((len(ranked), k), -1, dtype=np.int64)
    for b, row in enumerate(ranked):
        padded[b, : len(row)] = row
    ranks = first_hit_ranks(padded, np.array([table[t] for t in preds["target_title"]]))
    with atomic_dir(cache) as tmp:
        (tmp / "ranks.json").write_text(json.dumps(ranks.tolist()))
    return ranks


def gate_model(cfg: PipelineConfig, version: str, model_dir: Path, sequences: Path) -> GateDecision:
    """Champion/challenger on the newest rows: the new version's model, the champion and this
    window's baselines are scored on the same gate rows (`cfg.gate_eval()`), and
    `decide` applies the rule. Records every value, the paired difference with its interval, the
    rows' fingerprint and the decision with its reason as version tags and in the version's
    model card. Serialised per model by `promotion_lock`."""
    from cft_core.metrics import per_row_metric
    from tasks.tracking import tracking_uri

    uri = tracking_uri(cfg)
    client, name, version = registry_client(uri), cfg.registered_model_name(), str(version)
    r = cfg.registry
    metric = r.gate_metric.split("/")[1]
    ours_ranks, floor_ranks, preds = _gate_rows(cfg, model_dir, sequences)
    rows_fp = fingerprint({"data": sequences.name, "rows": preds["user_id"].tolist(),
                           "targets": preds["target_item_id"].tolist()})
    with promotion_lock(cfg, name):
        champion = _alias_version(client, name, CHAMPION)
        ours = per_row_metric(ours_ranks, metric)
        floors = {kind: per_row_metric(ranks, metric) for kind, ranks in floor_ranks.items()}
        means = {kind: float(values.mean()) for kind, values in floors.items()}
        if champion == version:
            return _record(client, cfg, GateDecision(version, True, "already champion", r.gate_metric, len(preds),
                                                     rows_fp, float(ours.mean()), champion, float(ours.mean()),
                                                     means["popularity"], 0.0, 0.0, 0.0,
                                                     markov_value=means["markov"]), move=False)
        champion_values = None
        if champion is not None:  # as it serves, on the same rows
            champion_ranks = _served_ranks(cfg, client.get_model_version(name, champion), preds, sequences, rows_fp)
            champion_values = per_row_metric(champion_ranks, metric)
        if champion_values is None:  # no champion at all (no baseline registered): the best floor decides
            champion_values = floors[max(means, key=means.get)]
        promoted, reason, (diff, low, high) = decide(ours, champion_values, floors if r.gate_floor else None,
                                                     r.gate_margin, r.gate_rule, r.gate_ci_level)
        floor_promoted = floor_reason = None
        if not promoted and r.gate_floor and champion is not None:
            floor_promoted, floor_reason = _champion_below_floor(client, cfg, champion, champion_values, floors, sequences)
        decision = GateDecision(version, promoted, reason, r.gate_metric, len(preds), rows_fp, float(ours.mean()),
                                champion, float(champion_values.mean()), means["popularity"], diff, low, high,
                                floor_promoted, floor_reason, markov_value=means["markov"])
        return _record(client, cfg, decision, move=True)


def _champion_below_floor(client, cfg: PipelineConfig, champion: str, champion_values, floors: dict,
                          sequences: Path) -> tuple[str | None, str | None]:
    """(version, reason) of this data window's best baseline (by mean on the gate rows) among
    those that beat the standing `champion` there by the gate's rule and margin, else (None,
    None). The gate's floor otherwise holds only when a version is promoted; a champion can fall
    below it later (an older window's model or baseline, or a person's promotion), and the
    champion must never be worse than the simple baselines. `floors`: {kind: the gate's per-row
    values of the evaluation's baseline}, which ranks as this window's registered baseline
    serves (the same training counts and transitions, `popularity_ranking` and `markov_ranking`;
    tests/train/test_registry.py checks them row for row), so the baseline is not downloaded and
    ranked again. A kind this window has no version of (registered before it existed) is passed over."""
    name, r = cfg.registered_model_name(), cfg.registry
    registered = window_baselines(client, name, json.loads((sequences / "manifest.json").read_text())["fingerprint"])
    for kind in sorted(floors, key=lambda k: -floors[k].mean()):
        window = registered.get(kind)
        if window is None:
            continue
        if window == champion:
            return None, None  # the best baseline there is already serves
        floor = floors[kind]
        better, _, (diff, low, high) = decide(floor, champion_values, None, r.gate_margin, r.gate_rule, r.gate_ci_level)
        if better:
            return window, (f"champion v{champion} ({champion_values.mean():.4f}) fell below this data window's {kind} "
                            f"baseline v{window} ({floor.mean():.4f}): {diff:+.4f} [{low:+.4f}, {high:+.4f}]")
    return None, None


def _record(client, cfg: PipelineConfig, d: GateDecision, move: bool) -> GateDecision:
    """Write the decision on the version (tags, model card) and move the aliases."""
    name = cfg.registered_model_name()
    tags = {"gate.metric": d.metric, "gate.value": repr(d.challenger_value), "gate.rows": str(d.rows),
            "gate.rows_fingerprint": d.rows_fingerprint, "gate.champion_version": str(d.champion_version),
            "gate.champion_value": repr(d.champion_value), "gate.popularity_value": repr(d.popularity_value),
            "gate.markov_value": repr(d.markov_value),
            "gate.difference": repr(d.difference), "gate.ci": f"[{d.ci_low!r}, {d.ci_high!r}]",
            "gate.rule": cfg.registry.gate_rule, "gate.decision": "promoted" if d.promoted else "kept challenger",
            "gate.reason": d.reason}
    if d.floor_promoted:
        tags["gate.floor_promoted"] = f"v{d.floor_promoted}: {d.floor_reason}"
    for key, value in tags.items():
        client.set_model_version_tag(name, d.version, key, value)
    mv = client.get_model_version(name, d.version)
    card = (mv.description or "").split("\n\n**Gate**")[0]
    client.update_model_version(name, d.version, description=card + "\n\n" + gate_card(cfg, d))
    if move and d.promoted:
        _set_champion(client, name, d.version, "gate", d.reason)
        if _alias_version(client, name, CHALLENGER) == d.version:
            client.delete_registered_model_alias(name, CHALLENGER)
    elif move:
        client.set_registered_model_alias(name, CHALLENGER, d.version)
        if d.floor_promoted:
            _set_champion(client, name, d.floor_promoted, "gate", d.floor_reason)
            log.info("gate %s: v%s (a baseline) is champion: %s", name, d.floor_promoted, d.floor_reason)
    log.info("gate %s v%s: %s", name, d.version, d.reason)
    return d


def gate_card(cfg: PipelineConfig, d: GateDecision) -> str:
    """The gate's section of a model card (Markdown), also the Prefect artifact's text."""
    level = f"{cfg.registry.gate_ci_level:.0%}"
    champion = (f"| champion (v{d.champion_version}, as it serves) | {d.champion_value:.4f} |"
                if d.champion_value is not None else "| champion | none |")
    markov = [f"| Markov-chain baseline | {d.markov_value:.4f} |"] if d.markov_value is not None else []
    floor = ([f"\n**The floor**: v{d.floor_promoted} (a baseline of this window) is champion now: {d.floor_reason}."]
             if d.floor_promoted else [])
    return "\n".join([
        f"**Gate** ({d.metric} on {d.rows} {cfg.registry.gate_split} rows, rows {d.rows_fingerprint}): "
        f"**{'promoted to champion' if d.promoted else 'kept as challenger'}**: {d.reason}.", "",
        "| | value |", "|---|---|",
        f"| this version | {d.challenger_value:.4f} |", champion,
        f"| popularity baseline | {d.popularity_value:.4f} |", *markov,
        f"| difference, {level} interval | {d.difference:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}] |", *floor])


def warm_start_source(cfg: PipelineConfig) -> tuple[Path, str] | None:
    """With `model.source: champion`: (model folder, "name vN") of the champion when it is an LLM
    version, else None (training then starts from `model.base`)."""
    from tasks.tracking import tracking_uri

    uri = tracking_uri(cfg)
    client, name = registry_client(uri), cfg.registered_model_name()
    champion = _alias_version(client, name, CHAMPION)
    if champion is None:
        return None
    mv = client.get_model_version(name, champion)
    if is_baseline(mv):
        return None
    return download_version_model(cfg, mv), f"{name} v{champion}"


def previous_decision(cfg: PipelineConfig, train_key: str) -> dict | None:
    """The gate tags of the LLM version trained with `train_key` (the data and every training
    setting, warm start aside: `tasks.training.run_fingerprint`) and served as this config ranks
    (`served_ranking_key`), when it was gated already, with its `version` and the `champion` now
    (a version, or None); else None. Such a run would retrain on the very rows that were judged
    before, and register what is registered."""
    from tasks.tracking import tracking_uri

    client = registry_client(tracking_uri(cfg))
    try:
        versions = versions_newest_first(client, cfg.registered_model_name())
    except Exception:  # noqa: BLE001 (no such model yet)
        return None
    ranking_key = served_ranking_key(cfg)
    for mv in versions:
        if mv.tags.get("cft.train_key") == train_key and mv.tags.get(RANKING_KEY_TAG) == ranking_key and "gate.decision" in mv.tags:
            return {"version": str(mv.version), "champion": _alias_version(client, mv.name, CHAMPION),
                    **{k: v for k, v in mv.tags.items() if k.startswith("gate.")}}
    return None


def promote(cfg: PipelineConfig, name: str, version: str, reason: str, uri: str, by: str | None = None,
            via: str | None = None) -> None:
    """A person's override: make `version` the champion, recording why (and who: `_set_champion`)."""
    check_reason(reason, "a manual promotion")
    check_by(by)
    client = registry_client(uri)
    version = str(version)
    with promotion_lock(cfg, name):
        client.get_model_version(name, version)  # raises when it does not exist
        _set_champion(client, name, version, "promote", reason, by, via)
        if _alias_version(client, name, CHALLENGER) == str(version):
            client.delete_registered_model_alias(name, CHALLENGER)


def champion_stack(history: list[dict]) -> list[str]:
    """The champions a rollback walks back through, newest last, from `champion_history`.

    A promotion (the gate's or a person's) pushes its version and a rollback undoes the one before
    it, like an undo stack: after v1, v2, v3 and a rollback to v2, the next rollback goes to v1,
    never back to the v3 that was just rolled back. Promoting the champion again changes nothing.
    """
    stack: list[str] = []
    for entry in history:
        version = str(entry["version"])
        if entry["action"] == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != version:  # (a rollback's target is normally the top by now)
            stack.append(version)
    return stack


def rollback(cfg: PipelineConfig, name: str, reason: str, uri: str, by: str | None = None,
             via: str | None = None) -> str:
    """Undo the last change of champion: make the champion before it champion again (repeated,
    further back: `champion_stack`); returns that version. by, via: as `promote`'s."""
    check_reason(reason, "a rollback")
    check_by(by)
    client = registry_client(uri)
    with promotion_lock(cfg, name):
        current = _alias_version(client, name, CHAMPION)
        stack = champion_stack(_history(client, name))
        if stack and stack[-1] == current:
            stack.pop()  # (when the alias was moved by hand elsewhere, the last recorded champion)
        if current is None or not stack:
            raise RegistryError(f"{name} has no earlier champion to roll back to (current: {current})")
        target = stack[-1]
        _set_champion(client, name, target, "rollback", f"{reason} (was v{current})", by, via)
        return target


def download_version_model(cfg: PipelineConfig, version) -> Path:
    """A registered version's model folder: its recorded local folder when still there, else the
    copy inside the registered pyfunc, downloaded once under <data_root>/registry/downloads."""
    import mlflow

    from cft_core.model_sources import ModelFolderError, weight_files

    local = Path(version.tags.get("model_dir", ""))
    if local.name and any(local.glob("*.safetensors")):  # one file or a large model's shards
        return local
    dest = cfg.data.data_root / "registry" / "downloads" / f"{version.name}-v{version.version}"
    if not (dest / "MLmodel").is_file():  # (atomic_dir puts a download in place only when complete)
        import shutil

        from tasks.storage import atomic_dir
        from tasks.tracking import tracking_uri

        if dest.exists():
            shutil.rmtree(dest)  # not a finished download
        registry_client(tracking_uri(cfg))  # models:/ URIs resolve through MLflow's global registry URI
        # Every process of a multi-process training may get here: each downloads into its own
        # folder, the first to finish moves it into place, the others drop theirs (atomic_dir).
        with atomic_dir(dest) as tmp:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}",
                                                dst_path=str(tmp))
    # Where the pyfunc keeps its `model` artifact (MLflow names the folder after the logged one).
    artifacts = _pyfunc_artifacts(dest / "MLmodel")
    if "model" not in artifacts:
        raise ModelFolderError(f"{version.name} v{version.version} holds no model folder (its artifacts: "
                               f"{', '.join(sorted(artifacts)) or 'none'})")
    folder = dest / artifacts["model"]["path"]
    weight_files(folder)  # a model folder, or ModelFolderError naming it
    return folder


def _pyfunc_artifacts(mlmodel: Path | str) -> dict:
    """The artifacts a registered pyfunc's MLmodel file lists: {"model": {"path": ...}, ...}."""
    import mlflow

    return mlflow.models.Model.load(str(mlmodel)).flavors.get("python_function", {}).get("artifacts", {})


def holds_model_folder(name: str, version: str) -> bool:
    """Whether the registered pyfunc of `name` v`version` carries a model folder among its
    artifacts (an LLM version does; read from its MLmodel file alone, MLflow's global registry URI
    naming the store)."""
    import tempfile

    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with tempfile.TemporaryDirectory(prefix="cft-mlmodel-") as tmp:
        try:
            mlmodel = get_artifact_repository(f"models:/{name}/{version}").download_artifacts("MLmodel", tmp)
        except (mlflow.exceptions.MlflowException, OSError):
            return False
        return "model" in _pyfunc_artifacts(mlmodel)


@dataclass(frozen=True)
class VersionSummary:
    """One registered version as `cft versions` lists it: what it is, the window it was built on,
    what its gate measured and decided, and the aliases it holds."""

    version: str
    kind: str  # "llm", "popularity", "markov"
    created: str  # UTC, to the minute
    data: str  # the data window's fingerprint
    gate: str  # "<metric> <value> (champion vN <value>)", or "" for a version no gate judged
    decision: str  # "promoted", "kept challenger", or ""
    aliases: list[str]
    # The first version registered from the same training run, when this one is another ranking of it
    # (`served_ranking_key`: other beams, backfill, ...), else None.
    training_of: str | None = None


def versions_summary(client, name: str) -> tuple[list[VersionSummary], list[dict]]:
    """(every version of registered model `name`, newest first; its champion history, newest
    first: the entries of `champion_history`, {version, action, reason, by, at}). RegistryError for
    a model the registry does not have."""
    import mlflow

    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        raise RegistryError(f"no registered model {name} in this store ({e.message.splitlines()[0]})") from None
    held: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        held.setdefault(str(version), []).append(alias)
    out = []
    versions = versions_newest_first(client, name)
    first_of_run = {mv.run_id: str(mv.version) for mv in versions if mv.run_id}  # (newest first: the oldest wins)
    for mv in versions:
        t = mv.tags
        gate = ""
        if "gate.value" in t:
            champion = (f" (champion v{t['gate.champion_version']} {float(t['gate.champion_value']):.4f})"
                        if t.get("gate.champion_value", "None") != "None" else "")
            gate = f"{t['gate.metric']} {float(t['gate.value']):.4f}{champion}"
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        first = first_of_run.get(mv.run_id)
        out.append(VersionSummary(str(mv.version), t.get(KIND_TAG, "?"), created, t.get("data_fingerprint", ""),
                                  gate, t.get("gate.decision", ""), held.get(str(mv.version), []),
                                  first if first != str(mv.version) else None))
    return out, list(reversed(champion_history(model)))


# A version registered this recently may still be on its way through its run's gate.
RECENT_VERSION_S = 24 * 3600


def expendable_versions(client, name: str, keep: int) -> list:
    """The versions of registered model `name` that `registry.keep_versions = keep` lets go,
    newest first: those beyond the newest `keep` that hold no alias, that a rollback cannot return
    to (`champion_stack`) and that were registered RECENT_VERSION_S ago or more. None of them
    serves or can serve again without a person choosing it, which they can no longer do."""
    import mlflow

    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:  # not registered yet: nothing to let go
        return []
    spared = {str(v) for v in model.aliases.values()}
    spared |= set(champion_stack(champion_history(model)))
    before = (time.time() - RECENT_VERSION_S) * 1000  # creation_timestamp is in ms
    return [mv for mv in versions_newest_first(client, name)[keep:] if str(mv.version) not in spared and mv.creation_timestamp < before]


def _logged_model_id(mv) -> str | None:
    """The logged model a version was registered from: its source `models:/m-<id>` (a SQL
    registry leaves `ModelVersion.model_id` empty); None for a version registered from a path."""
    found = re.fullmatch(r"models:/(m-[0-9a-f]+)", mv.source or "")
    return mv.model_id or (found.group(1) if found else None)


def _files_of(client, mv):
    """The artifact repository of a version's logged model (its pyfunc and, for an LLM version,
    its model folder); None for a version with no logged model."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    model_id = _logged_model_id(mv)
    return get_artifact_repository(client.get_logged_model(model_id).artifact_location) if model_id else None


def version_bytes(client, mv) -> int:
    """Bytes of the files `delete_version` frees."""
    repo = _files_of(client, mv)

    def size(path: str | None) -> int:
        return sum(size(f.path) if f.is_dir else (f.file_size or 0) for f in repo.list_artifacts(path))

    return size(None) if repo is not None else 0


def delete_version(client, mv) -> None:
    """Delete a registered version, then its logged model's files (as `mlflow gc` does for a
    deleted logged model) and the logged model (marked deleted); the run with its metrics and
    evaluations stays. The run forgets the recommender it logged, so that registering the run
    again logs a new one. (Each logged model of this pipeline is registered once: `register`.)"""
    repo = _files_of(client, mv)
    client.delete_model_version(mv.name, str(mv.version))
    if repo is None:
        return
    repo.delete_artifacts()
    client.delete_logged_model(model_id := _logged_model_id(mv))
    if mv.run_id:  # (the run tag of each ranking it logged: `log_recommender`; before those, one tag)
        for tag, value in client.get_run(mv.run_id).data.tags.items():
            if tag.startswith(RECOMMENDER_TAG) and value == f"models:/{model_id}":
                client.delete_tag(mv.run_id, tag)


def versions_newest_first(client, name: str) -> list:
    """The ModelVersions of registered model `name`, highest version number first."""
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version))


def registered_models(client) -> list:
    """Every registered model in the client's store (MLflow answers a page of 100 at a time)."""
    found, token = [], None
    while True:
        page = client.search_registered_models(page_token=token)
        found.extend(page)
        if not (token := page.token):
            return found


def registered_model_dirs(cfg: PipelineConfig) -> dict[Path, list[tuple[str, str, list[str]]]]:
    """The training model folders of every registered version in the store (all models): folder
    -> [(model name, version, the aliases it holds)]."""
    from tasks.tracking import tracking_uri

    client = registry_client(tracking_uri(cfg))
    dirs: dict[Path, list[tuple[str, str, list[str]]]] = {}
    for model in registered_models(client):
        for mv in sorted(client.search_model_versions(f"name='{model.name}'"), key=lambda v: int(v.version)):
            if mv.tags.get("model_dir"):
                aliases = sorted(a for a, v in model.aliases.items() if str(v) == str(mv.version))
                dirs.setdefault(Path(mv.tags["model_dir"]).resolve(), []).append((model.name, str(mv.version), aliases))
    return dirs
