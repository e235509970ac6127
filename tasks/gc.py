"""`cft gc`: free the data root of training runs nothing needs any more.

A training folder (its model, its evaluations) is removed only when the tracking store knows it
(its MLflow run is there), no version holding an alias was made from it (champion, challenger or
one of your own: no such version's `model_dir` tag points into it) and it finished
RECENT_TRAINING_S ago or more. A registered version keeps its own copy of the model in the MLflow
artifact store, and its run the evaluations, so the folder of a version without an alias is a
local copy: a warm start or `cft evaluate --model` from it downloads the model again, once.
An unfinished folder (no model/ yet: checkpoints of a run that may resume) goes once nothing in
it changed for ABANDONED_TRAINING_S and no process holds its training lock; its MLflow run, if
a killed process left it RUNNING, ends KILLED. Kept: younger unfinished folders, the models of
versions holding an alias, trainings finished within the last day (a pipeline run registers and
gates its training only after evaluating it, so gc between the two must not take it), and
trainings whose run is not in this store, since a store that does not know them cannot say whether they are registered
elsewhere (a team server, another tracking URI). Without a store there is nothing to decide by:
that is an error, not "nothing is registered".

Data windows go too: a sequences folder (with its validation reports) that no training left in
place was built from, and an ingested folder that no sequences folder left in place was built
from, except the newest of each data name (the window the next run starts from, or one just
prepared). Both are rebuilt from the source when needed again (same inputs, same folder: an
unfinished training, whose data gc cannot tell, gets its window back when it resumes), and the
registered versions carry what they serve (catalogue, counts) in the artifact store.

And the registry's caches under <data_root>/registry: `downloads/<name>-v<N>` (a version's
model fetched from the store when its own folder is not on this machine: a warm start, `cft
evaluate --model`; a full model copy) and `gate/<name>-v<N>-<key>` (a champion's ranks of one
window's gate rows). Only the current champion's are read again (the next warm start, the next
gate); those of any other version of a model this store knows go, and come back from the store
if that version is champion again. A model this store does not know keeps its caches.

And, where the profile sets `registry.keep_versions` (N), its registered model's versions beyond
the newest N, with their files in the artifact store (an LLM version holds a full copy of its
weights: a weekly retrain of SmolLM2 adds about 0.5 GB a week), except those holding an alias,
those a rollback can return to and those registered within the last day
(`tasks.registry.expendable_versions`). Their runs stay, so the MLflow UI still compares them.
Their training folders then go by the rules above, as folders of no registered version.

And downloads (`<data_root>/downloads/`: the files of sources given as URLs, the mirrors of
sources in object storage) that no ingested folder left in place was read from, once a day old
and unless the profile's own source is one of them: a source whose URL changed (a dated export, a
bucket prefix moved) left the old copy for good before. Each is fetched again if a run needs it.

And what interrupted writes left: stage outputs are written into a `.tmp-*` sibling and renamed
into place when complete (`tasks.storage`), so a killed process leaves one behind that nothing
reads. One untouched for LEFTOVER_AGE_S is removed (a younger one may be a write in progress).
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from schemas.config import PipelineConfig


@dataclass(frozen=True)
class Collected:
    removed: list[tuple[Path, int]]  # (training folder of no registered version, bytes)
    # (unfinished training folder, bytes, days untouched, whether its MLflow run was left RUNNING)
    abandoned_removed: list[tuple[Path, int, float, bool]]
    unaliased_removed: list[tuple[Path, int, str]]  # (training folder of versions without an alias, bytes, "name vN")
    kept: list[tuple[Path, str]]  # (training folder, why)
    windows_removed: list[tuple[Path, int]]  # (ingested or sequences folder, bytes)
    leftovers_removed: list[tuple[Path, int]]  # (`.tmp-*` file or folder of an interrupted write, bytes)
    caches_removed: list[tuple[Path, int]]  # (registry download or gate cache of a version not champion, bytes)
    downloads_removed: list[tuple[Path, int]]  # (a download or mirror no ingested folder left was read from, bytes)
    # ("name vN" of a version `registry.keep_versions` lets go, bytes of its logged model's files, its kind)
    versions_removed: list[tuple[str, int, str]]
    keep_versions: int | None
    dry_run: bool

    def lines(self) -> list[str]:
        """What was (or would be) removed and kept, a line per folder, then the totals: what
        `cft gc` prints and the `cft-gc` flow logs."""
        verb = "would remove" if self.dry_run else "removed"

        def mib(size: int) -> str:
            return f"{size / 2**20:,.0f} MiB"

        def total(found, what: str) -> str:  # found: (path, bytes, ...) entries
            return f"{len(found)} {what} ({mib(sum(entry[1] for entry in found))})"

        return [
            *(f"{verb} registered version {version} ({kind}, {mib(size)}): older than the newest {self.keep_versions}, "
              "no alias, not a rollback target (its run stays)" for version, size, kind in self.versions_removed),
            *(f"{verb} {path} ({mib(size)})" for path, size in self.removed),
            *(f"{verb} {path} ({mib(size)}): unfinished, untouched for {days:.0f} days (the same run again "
              "would train from the start)" + ("; its MLflow run, left RUNNING, ends KILLED" if running else "")
              for path, size, days, running in self.abandoned_removed),
            *(f"{verb} {path} ({mib(size)}): {versions} without an alias (the registry keeps its model)"
              for path, size, versions in self.unaliased_removed),
            *(f"kept {path}: {why}" for path, why in self.kept),
            *(f"{verb} {path} ({mib(size)})" for path, size in self.windows_removed),
            *(f"{verb} {path} ({mib(size)}): left by an interrupted write" for path, size in self.leftovers_removed),
            *(f"{verb} {path} ({mib(size)}): a registry cache of a version that is not champion"
              for path, size in self.caches_removed),
            *(f"{verb} {path} ({mib(size)}): a source's download no data folder left was read from"
              for path, size in self.downloads_removed),
            f"{verb} {total(self.removed, 'training folder(s)')}, "
            f"{total(self.abandoned_removed, 'unfinished training(s)')}, "
            f"{total(self.unaliased_removed, 'of versions without an alias')}, "
            f"{total(self.windows_removed, 'data folder(s)')}, "
            f"{total(self.leftovers_removed, 'leftover(s) of interrupted writes')}, "
            f"{total(self.caches_removed, 'registry cache(s)')}, "
            f"{total(self.downloads_removed, 'download(s)')}"
            + (f", {total(self.versions_removed, 'registered version(s)')}" if self.keep_versions else ""),
        ]


LEFTOVER_AGE_S = 24 * 3600  # far past any write in progress (a training saves its model in minutes)
# A download not yet ingested (a run fetching it now, or one whose validation failed and will be
# fixed) is not taken; a day covers a large download and its ingest.
RECENT_DOWNLOAD_S = 24 * 3600
# Far past a pipeline run's evaluation between its training and its registration (minutes for the
# CPU demo, an hour or so for a full-catalogue evaluation on a GPU).
RECENT_TRAINING_S = 24 * 3600
# An unfinished training resumes when the same data and settings run again. A weekly retrain sees
# new data, which names another folder, so checkpoints untouched for a week wait for a run that
# will not come (a killed SmolLM2 training under ZeRO-2 left 2.7 GB, most of it optimizer state).
# A run in progress writes a checkpoint at each save interval, far more often than this.
ABANDONED_TRAINING_S = 7 * 24 * 3600


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _newest_mtime(path: Path) -> float:
    """The newest modification time of a folder and anything inside (links not followed)."""
    return max(p.lstat().st_mtime for p in (path, *path.rglob("*")))


def collect(cfg: PipelineConfig, dry_run: bool = True) -> Collected:
    """Find (and unless `dry_run`, remove) the training folders, data windows, leftovers of
    interrupted writes and registry caches that nothing uses."""
    from schemas.errors import ConfigError, InputError
    from tasks.registry import holds_model_folder, registered_model_dirs
    from tasks.tracking import (
        end_abandoned_run,
        missing_store,
        run_left_running,
        tracking_uri,
        training_run_here,
    )
    from tasks.training import is_being_trained

    if not cfg.tracking.enabled:
        raise ConfigError("cft gc keeps what the model registry uses, and tracking is disabled in this profile "
                          "(tracking.enabled = false): enable it, pointing at the store your versions are in")
    if (database := missing_store(tracking_uri(cfg, create=False))) is not None:
        raise InputError(f"there is no tracking store at {database}: cft gc cannot tell which trainings are "
                         "registered without it; point tracking.tracking_uri (or MLFLOW_TRACKING_URI) at your store")
    root = cfg.data.data_root / "training"
    versions_removed = _expendable_versions(cfg, dry_run)
    gone = {version for version, _, _ in versions_removed}  # "name vN"
    in_use = {}  # the folders of the versions that stay
    for folder, versions in registered_model_dirs(cfg).items():
        if staying := [entry for entry in versions if f"{entry[0]} v{entry[1]}" not in gone]:
            in_use[folder] = staying
    removed, kept, data_used, unaliased, abandoned = [], [], set(), [], []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []:
        model = (run_dir / "model").resolve()
        if not (model / "training.json").is_file():
            untouched_s = time.time() - _newest_mtime(run_dir)
            if untouched_s < ABANDONED_TRAINING_S or is_being_trained(run_dir):
                kept.append((run_dir, f"unfinished (may resume; goes once untouched for "
                                      f"{ABANDONED_TRAINING_S // 86400} days)"))
                continue
            running = run_left_running(cfg, run_dir)
            abandoned.append((run_dir, folder_size(run_dir), untouched_s / 86400, running is not None))
            if not dry_run:
                if running is not None:
                    end_abandoned_run(cfg, running)
                shutil.rmtree(run_dir)
            continue
        summary = json.loads((model / "training.json").read_text())
        versions = in_use.get(model, [])  # [(registered model name, version, its aliases)]
        recent = time.time() - (model / "training.json").stat().st_mtime < RECENT_TRAINING_S
        if held := [f"{name} v{version} ({', '.join(aliases)})" for name, version, aliases in versions if aliases]:
            kept.append((run_dir, f"the model of {', '.join(held)}"))
        elif versions and recent:
            kept.append((run_dir, "a registered version's model, finished less than a day ago (its gate may be running)"))
        elif versions and not all(holds_model_folder(name, v) for name, v, _ in versions):
            kept.append((run_dir, "a registered version's model, and its registered copy lacks it"))
        elif versions:  # the registry keeps the model, the run the evaluations
            unaliased.append((run_dir, folder_size(run_dir), ", ".join(f"{name} v{v}" for name, v, _ in versions)))
            if not dry_run:
                shutil.rmtree(run_dir)
            continue
        elif training_run_here(cfg, run_dir, summary) is None:
            kept.append((run_dir, f"its MLflow run is not in {tracking_uri(cfg)} (tracked in another store, or not at all)"))
        elif recent:
            kept.append((run_dir, "finished less than a day ago (a pipeline run registers it after its evaluation)"))
        else:
            removed.append((run_dir, folder_size(run_dir)))
            if not dry_run:
                shutil.rmtree(run_dir)
            continue
        data_used.add(summary.get("data_fingerprint"))
    windows = _unused_windows(cfg.data.data_root, data_used, dry_run)
    return Collected(removed, abandoned, unaliased, kept, windows, _leftovers(cfg.data.data_root, dry_run),
                     _registry_caches(cfg, dry_run), _unused_downloads(cfg, {path for path, _ in windows}, dry_run),
                     versions_removed, cfg.registry.keep_versions, dry_run)


def _expendable_versions(cfg: PipelineConfig, dry_run: bool) -> list[tuple[str, int, str]]:
    """The profile's registered versions `registry.keep_versions` lets go (`registry.expendable_versions`),
    deleted with their model files unless `dry_run`: ("name vN", bytes, kind). Under the model's
    promotion lock, so that no gate, promotion or rollback moves an alias meanwhile."""
    from tasks.registry import (
        KIND_TAG,
        delete_version,
        expendable_versions,
        promotion_lock,
        registry_client,
        version_bytes,
    )
    from tasks.tracking import tracking_uri

    if cfg.registry.keep_versions is None:
        return []
    client, name = registry_client(tracking_uri(cfg, create=False)), cfg.registered_model_name()
    removed = []
    with promotion_lock(cfg, name):
        for mv in expendable_versions(client, name, cfg.registry.keep_versions):
            removed.append((f"{name} v{mv.version}", version_bytes(client, mv), mv.tags.get(KIND_TAG, "unknown kind")))
            if not dry_run:
                delete_version(client, mv)
    return removed


# The registry's cache folders: <name>-v<N> (downloads), <name>-v<N>-<fingerprint> (gate ranks).
_CACHE_FOLDER = {"downloads": re.compile(r"^(?P<name>.+)-v(?P<version>[0-9]+)$"),
                 "gate": re.compile(r"^(?P<name>.+)-v(?P<version>[0-9]+)-[0-9a-f]+$")}


def _registry_caches(cfg: PipelineConfig, dry_run: bool) -> list[tuple[Path, int]]:
    """Download and gate-cache folders of versions that are not their model's champion in this
    store (a model the store does not know keeps its folders; unfinished `.tmp-*` writes are
    `_leftovers`')."""
    from tasks.registry import CHAMPION, registered_models, registry_client
    from tasks.tracking import tracking_uri

    champions = None  # registered model name -> its champion's version (None: no champion)
    removed = []
    for kind, pattern in _CACHE_FOLDER.items():
        root = cfg.data.data_root / "registry" / kind
        for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            if folder.name.startswith(".") or not (found := pattern.match(folder.name)):
                continue  # (an unfinished write: `_leftovers`)
            if champions is None:
                champions = {m.name: str(m.aliases[CHAMPION]) if CHAMPION in m.aliases else None
                             for m in registered_models(registry_client(tracking_uri(cfg, create=False)))}
            if found["name"] not in champions or champions[found["name"]] == found["version"]:
                continue  # a model of another store, or the champion's: read again
            removed.append((folder, folder_size(folder)))
            if not dry_run:
                shutil.rmtree(folder)
    return removed


def _unused_downloads(cfg: PipelineConfig, windows_removed: set[Path], dry_run: bool) -> list[tuple[Path, int]]:
    """The folders under <data_root>/downloads that no ingested folder staying (not in
    `windows_removed`) lists a source file in, untouched for RECENT_DOWNLOAD_S, other than those of
    the profile's own source URLs. A folder is named by its URL's hash (`download_path`,
    `mirror_path`), so a listed file's path names it whether it was written relative or absolute."""
    from tasks.download import download_path, is_url
    from tasks.mirror import is_object_store_url, mirror_path

    data_root = cfg.data.data_root
    downloads = data_root / "downloads"
    if not downloads.is_dir():
        return []
    folders = {f.name: f for f in downloads.iterdir() if f.is_dir() and not f.name.startswith(".")}
    used = set()
    for manifest in (data_root / "ingested").glob("*/manifest.json"):
        if manifest.parent not in windows_removed:
            used |= {part for file in json.loads(manifest.read_text()).get("files", []) for part in Path(file).parts
                     if part in folders}
    source = cfg.data.source
    for url in filter(None, (source.path, source.items_path, source.meta_path)):
        if is_url(url):
            used.add(download_path(url, data_root).parent.name)
        elif is_object_store_url(url):
            used.add(mirror_path(url, data_root).name)
    removed = []
    for name, folder in sorted(folders.items()):
        if name in used or time.time() - _newest_mtime(folder) < RECENT_DOWNLOAD_S:
            continue
        removed.append((folder, folder_size(folder)))
        if not dry_run:
            shutil.rmtree(folder)
    return removed


def _leftovers(data_root: Path, dry_run: bool) -> list[tuple[Path, int]]:
    """`.tmp-*` files and folders under the data root untouched for LEFTOVER_AGE_S (the newest
    time of anything inside), outside the MLflow store and the local stack's state."""
    if not data_root.is_dir():
        return []
    now, removed = time.time(), []
    for stage in sorted(p for p in data_root.iterdir() if p.is_dir() and p.name not in ("mlflow", "stack")):
        for tmp in sorted(stage.rglob(".tmp-*")):
            if not tmp.exists():  # inside a leftover removed just before
                continue
            stats = [f.lstat() for f in ([tmp, *tmp.rglob("*")] if tmp.is_dir() else [tmp])]
            if now - max(st.st_mtime for st in stats) < LEFTOVER_AGE_S:
                continue
            removed.append((tmp, sum(st.st_size for st in stats if stat.S_ISREG(st.st_mode))))
            if not dry_run and tmp.is_dir():
                shutil.rmtree(tmp)
            elif not dry_run:
                tmp.unlink()
    return removed


def _by_data_name(stage_root: Path) -> dict[str, list[Path]]:
    """The finished folders of a stage (`<data name>-<fingerprint>`) by data name, newest last."""
    folders: dict[str, list[Path]] = {}
    for folder in stage_root.iterdir() if stage_root.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith(".") and (folder / "manifest.json").is_file():
            folders.setdefault(folder.name.rsplit("-", 1)[0], []).append(folder)
    return {name: sorted(found, key=lambda f: (f / "manifest.json").stat().st_mtime_ns) for name, found in folders.items()}


def _unused_windows(data_root: Path, data_used: set[str], dry_run: bool) -> list[tuple[Path, int]]:
    """Sequences folders no kept training was built from (`data_used`: their fingerprints), then
    ingested folders no kept sequences folder was built from; the newest of each name stays."""
    removed, ingested_used = [], set()
    for found in _by_data_name(data_root / "sequences").values():
        for folder in found:
            manifest = json.loads((folder / "manifest.json").read_text())
            if folder == found[-1] or manifest["fingerprint"] in data_used:
                ingested_used.add(Path(manifest["ingested"]).name)
                continue
            reports = sorted((data_root / "reports").glob(f"sequences-{folder.name}*.json"))
            removed.append((folder, folder_size(folder) + sum(r.stat().st_size for r in reports)))
            if not dry_run:
                shutil.rmtree(folder)
                for report in reports:
                    report.unlink()
    for found in _by_data_name(data_root / "ingested").values():
        for folder in found:
            if folder != found[-1] and folder.name not in ingested_used:
                removed.append((folder, folder_size(folder)))
                if not dry_run:
                    shutil.rmtree(folder)
    return removed
