"""`cft gc` and data windows: as data keeps arriving, each run prepares a new ingested and
sequences folder; gc removes those that no kept training was built from, keeps the newest, and a
removed window is rebuilt as it was when its inputs come back. And what interrupted writes left.

A real MLflow SQLite store; the trainings are folders with a training.json (gc reads no weights).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from schemas.config import PipelineConfig
from tasks.data import prepare
from tasks.gc import collect
from tests.conftest import mlflow_uris_restored
from tests.data.stage_content import write_purchase_log


def finished_training(root: Path, name: str, data_fingerprint: str, run_id: str, days_ago: float = 2) -> Path:
    model = root / "training" / name / "model"
    model.mkdir(parents=True)
    (model / "training.json").write_text(json.dumps({"data_fingerprint": data_fingerprint, "mlflow_run_id": run_id}))
    (model / "model.safetensors").write_bytes(b"0" * 1024)
    finished = time.time() - days_ago * 24 * 3600
    os.utime(model / "training.json", (finished, finished))
    return model.parent


def test_gc_removes_the_data_windows_no_kept_training_uses_and_the_leftovers_of_interrupted_writes(tmp_path):
    from mlflow import MlflowClient

    root, uri = tmp_path / "data", f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "raw" / "log.csv"
    log.parent.mkdir()
    cfg = PipelineConfig.model_validate({
        "data": {"name": "shop", "data_root": str(root), "k_core": 0, "input_roots": [str(log.parent)],
                 "source": {"format": "generic", "path": str(log), "timestamp_unit": "s",
                            "columns": {"user_id": "user", "item_id": "item", "timestamp": "ts"}}},
        "tracking": {"enabled": True, "tracking_uri": uri}})
    windows = []
    for users in (6, 7, 8):  # three retrains, each after more data arrived
        write_purchase_log(log, users)
        ingested, seq, _ = prepare(cfg.data)
        windows.append((ingested.path, seq.path))
    (i1, s1), (i2, s2), (i3, s3) = windows
    assert len({i1, i2, i3}) == 3 and len({s1, s2, s3}) == 3

    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("gc-test"))
    client.set_terminated(run.info.run_id)
    # Trained on window 1, tracked here, never registered: gc removes it, then nothing uses window 1.
    old = finished_training(root, "shop-old", s1.name.rsplit("-", 1)[1], run.info.run_id)
    # Trained on window 3 an hour ago, tracked here, not registered yet: a pipeline run may be
    # evaluating it before registration, so it stays (and so would its window, the newest anyway).
    recent = finished_training(root, "shop-recent", s3.name.rsplit("-", 1)[1], run.info.run_id, days_ago=1 / 24)
    # Trained on window 2, its run in another store: kept, and so is the window it was built from.
    elsewhere = finished_training(root, "shop-elsewhere", s2.name.rsplit("-", 1)[1], "a-run-of-another-store")
    reports = sorted((root / "reports").glob(f"sequences-{s1.name}*.json"))
    assert reports  # the window's validation reports, which go with it

    # What interrupted writes left: a build killed two days ago, one in progress, a JSON file.
    killed, writing = root / "sequences" / f".tmp-{s3.name}-0badc0de", root / "sequences" / f".tmp-{s3.name}-5eed1e55"
    for tmp in (killed, writing):
        (tmp / "part").mkdir(parents=True)
        (tmp / "part" / "train.parquet").write_bytes(b"0" * 4096)
    stale_json = root / "replay" / ".tmp-shop-timeline.json-1234abcd"
    stale_json.parent.mkdir()
    stale_json.write_text("{")
    in_store = root / "mlflow" / ".tmp-mlflow-own"  # MLflow's own, whatever it is
    in_store.mkdir(parents=True)
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in (killed, killed / "part", killed / "part" / "train.parquet", stale_json, in_store):
        os.utime(path, (two_days_ago, two_days_ago))

    planned = collect(cfg, dry_run=True)
    assert planned.leftovers_removed == [(stale_json, 1), (killed, 4096)]
    assert [p for p, _ in planned.removed] == [old]
    assert (recent, "finished less than a day ago (a pipeline run registers it after its evaluation)") in planned.kept
    assert [p for p, _ in planned.windows_removed] == [s1, i1]
    assert all(size > 0 for _, size in planned.windows_removed)
    assert s1.is_dir() and i1.is_dir()  # a dry run removes nothing

    done = collect(cfg, dry_run=False)
    assert done.windows_removed == planned.windows_removed
    assert not s1.exists() and not i1.exists() and not any(r.exists() for r in reports)
    assert all(p.is_dir() for p in (s2, i2, s3, i3, elsewhere, recent))  # used by a kept training; the newest
    assert not killed.exists() and not stale_json.exists() and writing.is_dir() and in_store.is_dir()
    again = collect(cfg, dry_run=True)
    assert again.windows_removed == again.leftovers_removed == []  # nothing more to free

    write_purchase_log(log, 6)  # the first window's inputs again: built again, under the same name
    ingested, seq, _ = prepare(cfg.data)
    assert (ingested.path, seq.path) == (i1, s1) and not seq.reused


def registry_store(tmp_path: Path):
    """(profile on a data root and a SQLite store, its client, a finished run in it)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = PipelineConfig.model_validate({"data": {"name": "shop", "data_root": str(tmp_path / "data")},
                                         "tracking": {"enabled": True, "tracking_uri": uri}})
    client = MlflowClient(uri, registry_uri=uri)
    run = client.create_run(client.create_experiment("gc-test"))
    client.set_terminated(run.info.run_id)
    return cfg, client, run


def test_gc_removes_the_downloads_of_source_urls_no_data_folder_left_was_read_from(tmp_path):
    """A source given as a URL is downloaded under the data root once (tasks/download.py). A shop
    exporting its log to a new URL each month left every month's file there for good; now the
    files of months whose data folders gc removed go too, once a day old. Kept: the download the
    newest ingest read, the profile's own source (placed, not ingested yet), a fresh download."""
    from mlflow import MlflowClient

    from tasks.download import download_path
    from tasks.mirror import mirror_path

    root, uri = tmp_path / "data", f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("gc-test")  # (gc refuses to guess without a store)

    def profile(url: str) -> PipelineConfig:
        return PipelineConfig.model_validate({
            "data": {"name": "shop", "data_root": str(root), "k_core": 0, "source": {
                "format": "generic", "path": url, "timestamp_unit": "s",
                "columns": {"user_id": "user", "item_id": "item", "timestamp": "ts"}}},
            "tracking": {"enabled": True, "tracking_uri": uri}})

    # (no request is made: a file where its download goes is used as is, the way to work offline)
    urls = [f"http://127.0.0.1:9/exports/shop-2026-{month}.csv" for month in (10, 11, 12)]
    placed = [download_path(url, root) for url in [*urls, "http://127.0.0.1:9/exports/shop-today.csv"]]
    for users, path in zip((6, 7, 8, 9), placed, strict=True):
        path.parent.mkdir(parents=True)
        write_purchase_log(path, users)
    october, november = (prepare(profile(url).data)[0].path for url in urls[:2])
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in placed[:3]:
        for each in (path, path.parent):
            os.utime(each, (two_days_ago, two_days_ago))

    cfg = profile(urls[2])  # December's export arrived; its run has not ingested it yet
    planned = collect(cfg, dry_run=True)
    assert [p for p, _ in planned.windows_removed] == [*planned_sequences(root, october), october]
    assert planned.downloads_removed == [(placed[0].parent, placed[0].stat().st_size)]  # October's
    assert f"would remove {placed[0].parent} (0 MiB): a source's download no data folder left was read from" in planned.lines()
    assert planned.lines()[-1].endswith(", 1 download(s) (0 MiB)")
    assert placed[0].is_file()  # (a dry run)
    collect(cfg, dry_run=False)
    assert not placed[0].parent.exists() and all(p.is_file() for p in placed[1:])
    assert november.is_dir() and collect(cfg, dry_run=True).downloads_removed == []

    # The shop moves its exports to a bucket: its mirror (tasks/mirror.py) is the profile's source
    # now, and December's file, never ingested, goes.
    bucket = mirror_path("s3://shop-exports/orders/", root)
    (bucket / "objects").mkdir(parents=True)
    for each in (bucket / "objects", bucket):
        os.utime(each, (two_days_ago, two_days_ago))
    moved = collect(profile("s3://shop-exports/orders/"), dry_run=True)
    assert moved.downloads_removed == [(placed[2].parent, placed[2].stat().st_size)]


def planned_sequences(root: Path, ingested: Path) -> list[Path]:
    """The sequences folders built from `ingested`."""
    return [m.parent for m in sorted((root / "sequences").glob("*/manifest.json"))
            if json.loads(m.read_text())["ingested"] == str(ingested)]


def test_gc_removes_the_checkpoints_of_trainings_interrupted_a_week_ago(tmp_path):
    """An unfinished training (checkpoints, no model/) stays while anything in it changed within
    the week or a process holds its training lock; past that, nothing will resume it and it goes,
    and its MLflow run ends KILLED if its process was killed outright and left it RUNNING."""
    from filelock import FileLock

    from tasks.gc import ABANDONED_TRAINING_S
    from tasks.training import training_lock_path

    cfg, client, run = registry_store(tmp_path)
    root = cfg.data.data_root / "training"
    left_running = client.create_run(run.info.experiment_id).info.run_id  # its process was SIGKILLed

    def interrupted(name: str, days_ago: float, touched_inside: float | None = None, run_id: str = "") -> Path:
        checkpoint = root / name / "checkpoints" / "checkpoint-16"
        checkpoint.mkdir(parents=True)
        (checkpoint / "optim_states.pt").write_bytes(b"0" * 2048)
        (root / name / "mlflow_run_id").write_text(run_id or run.info.run_id)
        then = time.time() - days_ago * 24 * 3600
        for path in (root / name, root / name / "checkpoints", checkpoint, checkpoint / "optim_states.pt",
                     root / name / "mlflow_run_id"):
            os.utime(path, (then, then))
        if touched_inside is not None:  # a checkpoint written since: the run goes on
            os.utime(checkpoint / "optim_states.pt", (time.time() - touched_inside * 24 * 3600,) * 2)
        return root / name

    abandoned = interrupted("shop-abandoned", days_ago=8, run_id=left_running)
    week = ABANDONED_TRAINING_S // 86400
    kept = {interrupted("shop-recent", days_ago=2): f"unfinished (may resume; goes once untouched for {week} days)",
            interrupted("shop-writing", days_ago=30, touched_inside=1 / 24): "unfinished (may resume; goes once untouched "
                                                                         f"for {week} days)",
            interrupted("shop-locked", days_ago=8): f"unfinished (may resume; goes once untouched for {week} days)"}
    lock_path = training_lock_path(root / "shop-locked")
    lock_path.parent.mkdir(parents=True)
    with FileLock(lock_path):  # another process trains it (flock: a second descriptor is refused)
        planned = collect(cfg, dry_run=True)
        assert [(p, size, round(days), running) for p, size, days, running in planned.abandoned_removed] == [
            (abandoned, 2048 + len(left_running), 8, True)]
        assert all((path, why) in planned.kept for path, why in kept.items())
        assert abandoned.is_dir() and client.get_run(left_running).info.status == "RUNNING"  # a dry run changes nothing
        assert "would remove 0 training folder(s) (0 MiB), 1 unfinished training(s) (0 MiB)" in planned.lines()[-1]
        assert any(line.endswith("its MLflow run, left RUNNING, ends KILLED") for line in planned.lines())
        done = collect(cfg, dry_run=False)
    assert [p for p, _, _, _ in done.abandoned_removed] == [abandoned] and not abandoned.exists()
    ended = client.get_run(left_running)
    assert ended.info.status == "KILLED" and ended.data.tags["cft.stopped_by"].startswith("abandoned")
    assert all(path.is_dir() for path in kept)
    # The lock released: it goes too; its run had ended (FINISHED here), so it is left as it is.
    assert [(p, running) for p, _, _, running in collect(cfg, dry_run=True).abandoned_removed] == [
        (root / "shop-locked", False)]


def test_gc_removes_the_registry_caches_of_versions_that_are_not_champion(tmp_path):
    """Downloads (a full model copy each) and gate ranks are read again only for the champion:
    those of other versions go, and those of a model this store does not know stay. The model's
    name holds "-v1" itself, so a folder's version is the last "-v<N>" of its name."""
    cfg, client, run = registry_store(tmp_path)
    root = cfg.data.data_root
    name = "cft-shop-v1"
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, source=str(tmp_path / "model"), run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", "2")
    client.create_registered_model("no-champion-yet")
    client.create_model_version("no-champion-yet", source=str(tmp_path / "model"), run_id=run.info.run_id)

    def cache(kind: str, folder: str, size: int) -> Path:
        path = root / "registry" / kind / folder
        path.mkdir(parents=True)
        (path / "MLmodel").write_bytes(b"0" * size)
        return path

    old_download, old_gate = cache("downloads", f"{name}-v1", 4096), cache("gate", f"{name}-v3-0123abcd", 10)
    no_champion = cache("downloads", "no-champion-yet-v1", 100)
    kept = [cache("downloads", f"{name}-v2", 1), cache("gate", f"{name}-v2-0123abcd", 1),
            cache("downloads", "of-another-store-v1", 1),  # a model this store does not know
            cache("downloads", f".tmp-{name}-v1-5eed1e55", 1)]  # a download in progress
    planned = collect(cfg, dry_run=True)
    assert planned.caches_removed == [(old_download, 4096), (no_champion, 100), (old_gate, 10)]
    assert old_download.is_dir()  # a dry run removes nothing
    assert collect(cfg, dry_run=False).caches_removed == planned.caches_removed
    assert not any(p.exists() for p in (old_download, old_gate, no_champion)) and all(p.is_dir() for p in kept)
    assert collect(cfg, dry_run=True).caches_removed == []


def test_gc_keeps_the_trainings_of_versions_holding_an_alias_and_of_recent_ones(tmp_path):
    """A version's training folder stays while the version holds any alias (champion, challenger,
    one of the user's own) or finished within the day; once neither, it goes, naming the
    versions made from it, when the registry keeps their model (their MLmodel lists it)."""
    cfg, client, run = registry_store(tmp_path)
    root = cfg.data.data_root
    folders = {name: finished_training(root, name, "f", run.info.run_id, days_ago=days)
               for name, days in (("staged", 2), ("old", 2), ("recent", 1 / 24), ("twice", 2), ("only", 2))}
    # What a registered pyfunc's MLmodel says of its artifacts: with the model folder, or without.
    registered, bare = tmp_path / "pyfunc", tmp_path / "pyfunc-without-model"
    for source, artifacts in ((registered, "{model: {path: artifacts/model}}"), (bare, "{catalogue: {path: c}}")):
        source.mkdir()
        (source / "MLmodel").write_text(f"flavors:\n  python_function:\n    artifacts: {artifacts}\n")
    client.create_registered_model("shop")
    # v1..v6; v4 and v5 share a folder; v6's registered copy has no model folder (so it is the only one)
    for name in ("staged", "old", "recent", "twice", "twice", "only"):
        client.create_model_version("shop", source=str(bare if name == "only" else registered), run_id=run.info.run_id,
                                    tags={"model_dir": str(folders[name] / "model")})
    client.set_registered_model_alias("shop", "staging", "1")

    planned = collect(cfg, dry_run=True)
    assert [(p, why) for p, _, why in planned.unaliased_removed] == [(folders["old"], "shop v2"),
                                                                     (folders["twice"], "shop v4, shop v5")]
    assert (folders["staged"], "the model of shop v1 (staging)") in planned.kept
    assert (folders["only"], "a registered version's model, and its registered copy lacks it") in planned.kept
    assert (folders["recent"], "a registered version's model, finished less than a day ago (its gate may be "
                               "running)") in planned.kept
    client.set_registered_model_alias("shop", "champion", "5")  # one of the folder's versions holds one
    done = collect(cfg, dry_run=False)
    assert [p for p, _, _ in done.unaliased_removed] == [folders["old"]] and done.removed == []
    assert not folders["old"].exists() and all(folders[n].is_dir() for n in ("staged", "recent", "twice", "only"))


def test_gc_sees_the_versions_of_every_registered_model_past_mlflows_first_page(tmp_path):
    """MLflow answers 100 registered models a page: the champion of the 101st still keeps its
    training folder (read from the first page only, it looked unregistered, old, and went)."""
    cfg, client, run = registry_store(tmp_path)
    root = cfg.data.data_root
    for i in range(100):  # names sort before the last one's
        client.create_registered_model(f"a-model-{i:03d}")
    training = finished_training(root, "last", "f", run.info.run_id)
    client.create_registered_model("z-model")
    client.create_model_version("z-model", source=str(tmp_path / "model"), run_id=run.info.run_id,
                                tags={"model_dir": str(training / "model")})
    client.set_registered_model_alias("z-model", "champion", "1")
    done = collect(cfg, dry_run=False)
    assert (training, "the model of z-model v1 (champion)") in done.kept and training.is_dir()


def test_gc_deletes_the_versions_keep_versions_lets_go_with_their_model_files(tmp_path, monkeypatch):
    """With `registry.keep_versions: 3`, the versions older than the newest three go, with the files
    of their logged models (an LLM version's weights), unless they hold an alias or a rollback can
    return to them; their runs stay, and their training folders then go as no version's. Without
    the setting, and for versions registered within the day, nothing goes."""
    from mlflow import MlflowClient

    from tasks import registry
    from tasks.registry import retention

    cfg, _, _ = registry_store(tmp_path)
    uri = cfg.tracking.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    with mlflow_uris_restored(uri):  # (MLflow's registry resolves a models:/ source through the global URI)
        experiment = client.create_experiment("versions", artifact_location=str(tmp_path / "artifacts"))
        name = cfg.registered_model_name()
        client.create_registered_model(name)
        runs, files = {}, {}
        kinds = {1: "llm", 2: "llm", 3: "llm", 4: "llm", 5: "llm", 6: "markov", 7: "popularity", 8: "markov", 9: "llm"}
        for version, kind in kinds.items():
            runs[version] = run_id = client.create_run(experiment).info.run_id
            client.log_metric(run_id, "valid/constrained/NDCG_at_10", 0.01 * version)
            if version == 6:  # registered from a path: no logged model, no files to free
                client.create_model_version(name, source=str(tmp_path / "somewhere"), run_id=run_id, tags={"cft.kind": kind})
                continue
            logged = client.create_logged_model(experiment, source_run_id=run_id)
            weights = tmp_path / f"model-{version}"
            weights.mkdir()
            (weights / "model.safetensors").write_bytes(b"0" * 1024 * version)
            client.log_model_artifacts(logged.model_id, str(weights))
            client.finalize_logged_model(logged.model_id, "READY")
            client.set_tag(run_id, "cft.recommender_uri", f"models:/{logged.model_id}")
            client.create_model_version(name, source=f"models:/{logged.model_id}", run_id=run_id,
                                        model_id=logged.model_id, tags={"cft.kind": kind})
            files[version] = Path(logged.artifact_location) / "model.safetensors"
        for version in ("1", "3", "5"):  # champions in turn: a rollback returns to v3, then v1
            registry.set_champion(client, name, version, "gate", "better")
        client.set_registered_model_alias(name, "staging", "2")
        training = finished_training(cfg.data.data_root, "v4", "f", runs[4])
        client.set_model_version_tag(name, "4", "model_dir", str(training / "model"))
        keeping = cfg.updated({"registry.keep_versions": 3})

        assert collect(keeping, dry_run=True).versions_removed == []  # all registered within the day
        monkeypatch.setattr(retention, "RECENT_VERSION_S", 0)
        assert collect(cfg, dry_run=True).versions_removed == []  # keep_versions unset: every version stays
        assert "registered version" not in collect(cfg, dry_run=True).lines()[-1]
        planned = collect(keeping, dry_run=True)
        assert planned.versions_removed == [(f"{name} v6", 0, "markov"), (f"{name} v4", 4096, "llm")]
        assert (f"would remove registered version {name} v4 (llm, 0 MiB): older than the newest 3, no alias, not a "
                "rollback target (its run stays)") in planned.lines()
        assert planned.lines()[-1].endswith(", 2 registered version(s) (0 MiB)")
        assert training.is_dir() and files[4].is_file() and len(client.search_model_versions(f"name='{name}'")) == 9

        done = collect(keeping, dry_run=False)
        assert done.versions_removed == planned.versions_removed
        assert sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'")) == [1, 2, 3, 5, 7, 8, 9]
        assert not files[4].exists() and all(files[v].is_file() for v in files if v != 4)
        assert client.get_run(runs[4]).data.metrics == {"valid/constrained/NDCG_at_10": 0.04}  # the run stays
        assert "cft.recommender_uri" not in client.get_run(runs[4]).data.tags  # registering it again logs anew
        assert "cft.recommender_uri" in client.get_run(runs[5]).data.tags
        assert [p for p, _ in done.removed] == [training] and not training.exists()  # no version's folder now
        assert registry.rollback(keeping, name, "bad week", uri) == "3"  # the rollback path is whole
        # v5, rolled back from, is no rollback target now (its run stays, to see what went wrong).
        assert collect(keeping, dry_run=True).versions_removed == [(f"{name} v5", 5120, "llm")]
