"""What the registry's parts share: the aliases and tags, version URIs, the client, the promotion lock.
"""

from __future__ import annotations

import re

from filelock import FileLock

from schemas.config import PipelineConfig
from schemas.errors import InputError, mlflow_absent
from tasks.baselines import BASELINES
from tasks.storage import fingerprint
from tasks.tracking import missing_store

CHAMPION, CHALLENGER = "champion", "challenger"
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
    except MlflowException as e:
        if not mlflow_absent(e):
            raise
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


# A run tag per served ranking (`served_ranking_key`): the logged recommender of that ranking.
RECOMMENDER_TAG = "cft.recommender_uri"
RANKING_KEY_TAG = "cft.ranking_key"  # version tag: the served ranking's key


def served_ranking_key(cfg: PipelineConfig) -> str:
    """What an LLM version ranks with besides its training's model and catalogue: the ranking
    settings of the gate's method (beams, `eval.backfill`, precision, ...; not the batch size, which
    the server sets), the prompts' domain and the default k. A training run is registered once per
    key (`register`), so a change of them (e.g. `eval.constrained_search_beams`, which docs/evaluation.md
    advises for serving) registers the same training anew, to be gated, where it once said "nothing
    new"; and a version registered before the key existed counts as another ranking."""
    from tasks.settings import ranking_settings

    ranking = ranking_settings(cfg, cfg.gate_method()).to_dict()
    ranking["generation"].pop("batch_size")
    return fingerprint({"ranking": ranking, "domain": cfg.data.domain, "top_k": cfg.registry.top_k})


KIND_TAG = "cft.kind"  # "llm", or a baseline's kind: "popularity", "markov" (tasks.baselines.BASELINES)


def is_baseline(version) -> bool:
    """Whether a registered ModelVersion is a data window's baseline (no model folder, no evaluation)."""
    return version.tags.get(KIND_TAG) in BASELINES


def alias_version(client, name: str, alias: str) -> str | None:
    """The version `alias` of registered model `name` names, or None where it names none."""
    import mlflow

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException as e:
        if not mlflow_absent(e):  # (a read refused, or failed, is not "no such alias")
            raise
        return None


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
