"""Sources given as URLs: download once into the data root, verify, unpack.

    <data_root>/downloads/<file name>-<hash of the URL>/<file name>     the downloaded bytes
                                                        /unpacked/      a .zip's contents

A download streams into `<file name>.part` with a progress bar and is renamed into place only
when complete, so an interrupted download never passes for a finished one. A file already at
the final path is used as is (the cache, and the way to work offline: place the file there by
hand). With `source.sha256` set for the URL, the file's SHA-256 must match.

Errors: a network failure raises `SourceUnavailable` (transient: the flow retries it) whose
message says where to place the file by hand; a missing URL (HTTP 4xx), a checksum mismatch
or an unsafe archive raises `DataError`.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from schemas.errors import DataError, SourceUnavailable
from tasks.storage import file_digest, fingerprint

CHUNK = 1 << 20  # 1 MiB per read while streaming


def is_url(text: str) -> bool:
    return urlparse(text).scheme in ("http", "https")


def download_path(url: str, data_root: Path) -> Path:
    """Where the bytes of `url` are kept under the data root."""
    name = PurePosixPath(urlparse(url).path).name or "download"
    return data_root / "downloads" / f"{name}-{fingerprint(url)[:12]}" / name


def _download(url: str, target: Path, timeout: float, progress: bool) -> None:
    import requests
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if 400 <= response.status_code < 500:
                raise DataError(f"source URL {url} answered HTTP {response.status_code}; check the address")
            response.raise_for_status()
            total = int(response.headers.get("content-length") or 0) or None
            with open(part, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                               desc=f"download {target.name}", disable=None if progress else True) as bar:
                for block in response.iter_content(CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except requests.RequestException as e:
        part.unlink(missing_ok=True)
        raise SourceUnavailable(
            f"could not download {url} ({type(e).__name__}: {e}). Without network access, fetch it "
            f"elsewhere and place it at {target} (a file there is used as is), or set the source "
            "path to a local copy under the data root."
        ) from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)


def _unpack(archive: Path) -> Path:
    """Extract a zip next to it (once); refuse members that would land outside the folder."""
    out = archive.parent / "unpacked"
    if not out.is_dir():
        tmp = archive.parent / "unpacked.part"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    parts = PurePosixPath(member).parts
                    if member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                        raise DataError(f"{archive}: archive member {member!r} points outside the archive; refused")
                zf.extractall(tmp)
        except zipfile.BadZipFile as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{archive}: not a readable zip archive ({e})") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.replace(tmp, out)
    entries = [p for p in out.iterdir() if not p.name.startswith(("__MACOSX", "."))]
    # ml-100k.zip holds one folder ml-100k/: the source is that folder.
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out


def fetch(url: str, data_root: Path, sha256: str | None = None, *, timeout: float = 60.0,
          progress: bool = True) -> Path:
    """Local path of a source URL: the downloaded file, or the folder a .zip unpacks to."""
    target = download_path(url, data_root)
    fresh = not target.is_file()
    if fresh:
        _download(url, target, timeout, progress)
    if sha256:
        digest = file_digest(target)
        if digest != sha256.strip().lower():
            if fresh:  # never keep bytes that failed their check
                target.unlink()
            raise DataError(
                f"{target} (from {url}) has SHA-256 {digest}, but source.sha256 expects {sha256}"
                + ("" if fresh else "; delete the file to download it again")
            )
    return _unpack(target) if target.suffix.lower() == ".zip" else target
