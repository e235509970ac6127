"""Content-addressed, atomic stage outputs.

A stage's output folder is named by a fingerprint of its inputs and settings, written into a
temporary sibling folder and renamed into place only when complete. So a re-run with the same
inputs finds the folder and reuses it, two runs never overwrite each other, and a crash leaves
no half-written output (at worst a `.tmp-*` folder that is never read).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# In every folder's name, downloads' and mirrors' included: bump it when a stage's output for the
# same inputs changes (v2: titles normalised at ingest), unless that stage has a version of its own
# (`with_code_versions`: ingest's tasks.data.INGEST_VERSION, training's, evaluation's, the baselines').
CODE_VERSION = "data-v2"


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_digests(files: list[Path], cache_file: Path | None) -> list[str]:
    """`file_digest` of each of `files`, taken from `cache_file` where the file's size, mtime,
    ctime and inode are those it was hashed with, else hashed and recorded there (None: every
    file hashed, nothing recorded: `data.digest_cache: false`).

    So an unchanged source costs a stat a file, not a read of every byte: a scheduled retrain on a
    data lake of 50 GB read them all to learn that nothing changed. ctime makes it safe: any write
    to a file sets it to now, and no tool sets it back (`cp -p`, `rsync -t` and `touch -d` restore
    mtime only), so a file rewritten with its old size and mtime is hashed again. Entries of files
    gone are dropped; a cache that does not read is ignored; two processes writing it at once lose
    at most each other's entries, which are hashed again next time."""
    if cache_file is None:
        return [file_digest(file) for file in files]
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8")) if cache_file.is_file() else {}
    except (ValueError, OSError):
        cache = {}
    digests, changed = [], False
    for file in files:
        st = file.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = cache.get(str(file))
        if isinstance(known, list) and len(known) == 2 and known[0] == stamp:
            digests.append(known[1])
            continue
        digests.append(file_digest(file))
        cache[str(file)], changed = [stamp, digests[-1]], True
    if changed:
        cache = {path: entry for path, entry in cache.items() if os.path.exists(path)}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_file, cache)
    return digests


def fingerprint(payload: Any) -> str:
    """sha256 of a JSON-able payload (keys sorted), 16 hex chars."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(f"{CODE_VERSION}\n{text}".encode()).hexdigest()[:16]


def with_code_versions(payload: dict, **versions: int) -> dict:
    """`payload` with, under "code", those of a stage's own code `versions` that are past 1 (a
    stage's output changed for the same inputs since CODE_VERSION was last bumped: only its
    folders are written again). Version 1 is never in a key, so a stage that gains a version keeps
    every folder written before it."""
    if past_one := {name: v for name, v in versions.items() if v > 1}:
        return {**payload, "code": past_one}
    return payload


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes `target` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:  # someone else produced the same content-addressed folder first
            if not target.is_dir():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)
