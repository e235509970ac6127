"""Sources in object storage (`s3://bucket/prefix`): mirrored into the data root at every ingest.

    <data_root>/downloads/<bucket>-<hash of the URL>/objects/<key under the prefix>   the copies
                                                    /manifest.json   what was copied: {"objects": {key:
                                                                     [size, mtime ns]}, "file": the key when
                                                                     the URL names one object, else null}

A log in a bucket keeps growing (an export job adds a part a day), so unlike a downloaded file
(tasks/download.py, fetched once) the mirror is brought up to date whenever a run ingests: new
and changed objects (by size and modification time) are copied, objects gone from the bucket are
removed from the mirror, unchanged ones cost a listing only. The readers then read the mirror like
any local folder or file, and the ingest key is its files' bytes, as for local sources. What no
reader reads is not copied (keys with a "." or "_" name in them: Spark's `_temporary/` while a
job writes, `_SUCCESS`), and an object deleted between the listing and its copy (a job moving
its files into place) is left to the next sync; a Delta, Iceberg or Hudi table is refused
(tasks/readers/parts.py, `refuse_table_format`). Each copy streams into a `.tmp-` file renamed into
place when complete (gc removes one an interrupted copy left), and the manifest is written after
the copies, so an interrupted sync copies again what it had not finished. A lock keeps two runs
from syncing the same mirror at once.

The bucket is read with pyarrow's S3 client and the usual AWS settings (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY or a profile, AWS_DEFAULT_REGION; AWS_ENDPOINT_URL for MinIO or another
S3-compatible store). A failure to reach it raises `SourceUnavailable` (the flow retries); a
bucket or key that is not there, or access refused, raises `DataError`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from schemas.errors import DataError, SourceUnavailable
from tasks.readers import hidden, refuse_table_format
from tasks.storage import fingerprint, write_json_atomic

log = logging.getLogger(__name__)

SCHEMES = ("s3",)
CHUNK = 1 << 20  # 1 MiB per read while copying
# Words in pyarrow's errors that mean the address or the credentials are wrong, not the network.
NOT_TRANSIENT = ("NoSuchBucket", "NoSuchKey", "ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId",
                 "SignatureDoesNotMatch", "HTTP response code: 403", "HTTP response code: 404")


def is_object_store_url(text: str) -> bool:
    return urlparse(text).scheme in SCHEMES


@dataclass(frozen=True)
class MirrorReport:
    copied: int  # new or changed objects copied
    removed: int  # local copies of objects gone from the bucket
    unchanged: int
    copied_bytes: int


def mirror_path(url: str, data_root: Path) -> Path:
    """The local folder that mirrors `url` (its objects under `objects/`)."""
    bucket = urlparse(url).netloc or "bucket"
    return data_root / "downloads" / f"{bucket}-{fingerprint(url)[:12]}"


def _unavailable_or_bad(url: str, e: OSError, local: Path) -> Exception:
    """The error to raise for pyarrow's `e` while syncing `url` into `local`."""
    said = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if any(word in str(e) for word in NOT_TRANSIENT):
        return DataError(f"source {url}: {said}; check the bucket, the key and the credentials (AWS_* settings)")
    return SourceUnavailable(f"could not read {url} ({said}); the last mirror of it is {local} (set data.source.path "
                             "to it to use it without the bucket)" if local.exists() else
                             f"could not read {url} ({said}); nothing of it is mirrored here yet")


def open_store(url: str):
    """(pyarrow filesystem, path in it) of an object-store URL: S3FileSystem and "bucket/prefix"."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(url)


def mirror(url: str, data_root: Path, sync: bool = True) -> Path:
    """The local path of object-storage `url`: the mirror of the object, or of the folder of objects
    under the prefix, brought up to date first (unless `sync` is False and a mirror exists)."""
    from filelock import FileLock

    target = mirror_path(url, data_root)
    local = target / "objects"
    manifest = target / "manifest.json"
    if not sync and manifest.is_file():
        return _local_source(local, json.loads(manifest.read_text(encoding="utf-8")))
    target.mkdir(parents=True, exist_ok=True)
    try:
        filesystem, root = open_store(url)
    except (OSError, ValueError) as e:
        raise DataError(f"source {url}: not an object-store address pyarrow can read ({e})") from e
    with FileLock(target / ".lock"):
        try:
            report, listed = sync_objects(filesystem, root.rstrip("/"), local, manifest, url)
        except OSError as e:
            raise _unavailable_or_bad(url, e, local) from e
        except DataError as e:
            raise DataError(f"source {url}: {e}") from e
    log.info("mirrored %s: %d new or changed object(s) (%.1f MB), %d removed, %d unchanged", url, report.copied,
             report.copied_bytes / 1e6, report.removed, report.unchanged)
    return _local_source(local, listed)


def _local_source(local: Path, manifest: dict) -> Path:
    """The mirror of one object is that file; of a prefix, the folder."""
    return local / manifest["file"] if manifest.get("file") else local


def sync_objects(filesystem, root: str, local: Path, manifest: Path, url: str | None = None) -> tuple[MirrorReport, dict]:
    """Bring `local` up to date with the objects at `root` of a pyarrow `filesystem` (a file, or
    every file under a prefix; `url`: its address, for the progress bar); returns what changed and
    the new manifest. DataError when `root` names nothing, or a key would land outside `local`."""
    from pyarrow import fs

    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.File:
        objects = {PurePosixPath(root).name: info}
    elif info.type == fs.FileType.Directory:
        objects = {PurePosixPath(f.path).relative_to(root).as_posix(): f
                   for f in filesystem.get_file_info(fs.FileSelector(root, recursive=True)) if f.type == fs.FileType.File}
        refuse_table_format(root, objects)
        # What no reader reads is not copied: a job's files in progress (Spark's `_temporary/`), markers.
        objects = {key: f for key, f in objects.items() if not hidden(key)}
    else:
        raise DataError("no object or prefix there")
    for key in objects:
        parts = PurePosixPath(key).parts
        if key.startswith("/") or ".." in parts or not parts:
            raise DataError(f"object key {key!r} would land outside the mirror; refused")
    from tqdm.auto import tqdm

    before = json.loads(manifest.read_text(encoding="utf-8"))["objects"] if manifest.is_file() else {}
    listed = {key: [f.size, f.mtime_ns] for key, f in objects.items()}
    todo = [key for key, stamp in listed.items() if not (
        before.get(key) == stamp and (local / key).is_file() and (local / key).stat().st_size == stamp[0])]
    copied = copied_bytes = 0
    # (a first sync of a large bucket takes minutes: a bar on a terminal, none in a flow run's log)
    with tqdm(total=sum(listed[key][0] for key in todo), unit="B", unit_scale=True, disable=None if todo else True,
              desc=f"mirror {len(todo)} object(s) of {url or root}") as bar:
        for key in todo:
            try:
                _copy(filesystem, objects[key].path, local / key, bar.update)
            except FileNotFoundError:  # deleted since the listing (a job moving its parts into place): gone
                log.info("%s: deleted from the store while it was mirrored; left to the next sync", key)
                del listed[key]
                continue
            copied, copied_bytes = copied + 1, copied_bytes + listed[key][0]
    removed = 0
    for key in set(before) - set(listed):
        if (local / key).is_file():
            (local / key).unlink()
            removed += 1
            for folder in (local / key).parents:  # and the folders it leaves empty (a dropped partition's)
                if folder == local or any(folder.iterdir()):
                    break
                folder.rmdir()
    written = {"objects": listed, "file": PurePosixPath(root).name if info.type == fs.FileType.File else None}
    write_json_atomic(manifest, written)
    return MirrorReport(copied, removed, len(listed) - copied, copied_bytes), written


def _copy(filesystem, source: str, path: Path, copied=lambda n: None) -> None:
    """Stream one object into `path`, through a `.tmp-` file renamed into place when complete;
    `copied(bytes)` after each block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".tmp-{path.name}")
    try:
        with filesystem.open_input_stream(source) as src, open(part, "wb") as out:
            while block := src.read(CHUNK):
                out.write(block)
                copied(len(block))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, path)
