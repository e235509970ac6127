"""Loading a registered version: its pyfunc (`LoadedPyfunc`), its model folder, the warm start.
"""

from __future__ import annotations

from pathlib import Path

from schemas.config import PipelineConfig
from schemas.errors import mlflow_refused
from tasks.registry.names import CHAMPION, alias_version, is_baseline, registry_client


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


def warm_start_source(cfg: PipelineConfig) -> tuple[Path, str] | None:
    """With `model.source: champion`: (model folder, "name vN") of the champion when it is an LLM
    version, else None (training then starts from `model.base`)."""
    from tasks.tracking import tracking_uri

    uri = tracking_uri(cfg)
    client, name = registry_client(uri), cfg.registered_model_name()
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        return None
    mv = client.get_model_version(name, champion)
    if is_baseline(mv):
        return None
    return download_version_model(cfg, mv), f"{name} v{champion}"


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
        except (mlflow.exceptions.MlflowException, OSError) as e:
            if mlflow_refused(e):
                raise
            return False
        return "model" in _pyfunc_artifacts(mlmodel)
