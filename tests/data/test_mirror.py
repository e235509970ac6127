"""Object-store sources (tasks/mirror.py): the mirror copies new and changed objects, removes those
gone from the bucket, leaves no half-copied file, and an s3:// source is read anew when a part
arrives. The sync runs on pyarrow's filesystem interface; here a local folder stands in for the
bucket (pyarrow's LocalFileSystem, the same calls as its S3FileSystem), and `open_store`
is pointed at it for the s3:// address: the S3 protocol itself is pyarrow's, checked by hand
against an S3 server (infra/README.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyarrow import fs

from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError, SourceUnavailable
from tasks import mirror
from tasks.data import ingest, ingest_target


def _put(bucket: Path, key: str, text: str, mtime: float | None = None) -> None:
    path = bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _sync(bucket: Path, root: str, tmp_path: Path, filesystem=None):
    return mirror.sync_objects(filesystem or fs.LocalFileSystem(), str(bucket / root), tmp_path / "m" / "objects",
                               tmp_path / "m" / "manifest.json")


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_sync_copies_new_and_changed_objects_and_removes_those_gone(tmp_path):
    bucket, local = tmp_path / "bucket", tmp_path / "m" / "objects"
    _put(bucket, "logs/part-0.csv", "a\n1\n", mtime=1_000_000)
    _put(bucket, "logs/2026/part-1.csv", "a\n2\n", mtime=1_000_000)
    _put(bucket, "other/x.csv", "not under the prefix\n")

    report, written = _sync(bucket, "logs", tmp_path)
    assert (report.copied, report.removed, report.unchanged, report.copied_bytes) == (2, 0, 0, 8)
    assert _tree(local) == {"part-0.csv": "a\n1\n", "2026/part-1.csv": "a\n2\n"}
    assert written["file"] is None and set(written["objects"]) == {"part-0.csv", "2026/part-1.csv"}
    copied_at = (local / "part-0.csv").stat().st_mtime_ns

    report, _ = _sync(bucket, "logs", tmp_path)  # nothing changed: a listing, no copy
    assert (report.copied, report.removed, report.unchanged) == (0, 0, 2)
    assert (local / "part-0.csv").stat().st_mtime_ns == copied_at

    _put(bucket, "logs/part-0.csv", "a\n1\n3\n", mtime=2_000_000)  # rewritten by the export job
    _put(bucket, "logs/part-2.csv", "a\n4\n")                      # a new day's part
    (bucket / "logs" / "2026" / "part-1.csv").unlink()             # withdrawn
    report, _ = _sync(bucket, "logs", tmp_path)
    assert (report.copied, report.removed, report.unchanged) == (2, 1, 0)
    assert _tree(local) == {"part-0.csv": "a\n1\n3\n", "part-2.csv": "a\n4\n"}
    assert not (local / "2026").exists()  # (the folder it left empty too)

    (local / "part-2.csv").unlink()  # a local copy lost (by hand, a disk cleanup): copied again
    assert _sync(bucket, "logs", tmp_path)[0].copied == 1 and (local / "part-2.csv").read_text() == "a\n4\n"


def test_what_no_reader_reads_is_not_copied_and_an_object_deleted_since_the_listing_is_left(tmp_path):
    """While Spark writes, its attempt sits under `_temporary/` and is moved into place (copied and
    deleted, on S3) when the job commits: such keys are not copied, and one that goes between the
    listing and its copy is left to the next sync, not an error."""
    bucket, local = tmp_path / "bucket", tmp_path / "m" / "objects"
    _put(bucket, "logs/dt=1/part-0.csv", "a\n1\n")
    _put(bucket, "logs/_SUCCESS", "")
    _sync(bucket, "logs", tmp_path)  # (the marker is not copied)
    assert _tree(local) == {"dt=1/part-0.csv": "a\n1\n"}
    _put(bucket, "logs/_temporary/0/task_1/dt=2/part-1.csv", "a\n" + "2\n" * 1000)
    _put(bucket, "logs/dt=2/.part-1.csv.crc", "crc")
    _put(bucket, "logs/dt=2/part-9.csv", "a\n9\n")

    class Committing(fs.LocalFileSystem):
        """The job commits between the listing and the copy of part-9: it is deleted."""

        def open_input_stream(self, path):
            if path.endswith("part-9.csv"):
                os.remove(path)
            return super().open_input_stream(path)

    report, written = _sync(bucket, "logs", tmp_path, filesystem=Committing())
    assert (report.copied, report.removed, report.unchanged) == (0, 0, 1)
    assert set(written["objects"]) == {"dt=1/part-0.csv"} and _tree(local) == {"dt=1/part-0.csv": "a\n1\n"}
    _put(bucket, "logs/dt=2/part-1.csv", "a\n2\n")  # the committed part
    assert _sync(bucket, "logs", tmp_path)[0].copied == 1 and set(_tree(local)) == {"dt=1/part-0.csv", "dt=2/part-1.csv"}


def test_a_table_formats_folder_in_a_bucket_is_refused_before_a_copy(tmp_path):
    bucket = tmp_path / "bucket"
    _put(bucket, "orders/part-0.parquet", "x")
    _put(bucket, "orders/_delta_log/00000000000000000000.json", "{}")
    with pytest.raises(DataError, match=r"orders: a Delta Lake table \(_delta_log/ in it\)"):
        _sync(bucket, "orders", tmp_path)
    assert not (tmp_path / "m" / "objects").exists()


def test_the_progress_bar_counts_the_bytes_to_copy(tmp_path, monkeypatch):
    """A first sync of a large bucket takes minutes: the bar's total is what will be copied, and it
    fills as blocks arrive; a sync with nothing to copy shows none."""
    import tqdm.auto

    bars = []

    class Recorder(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})
            bars.append({"total": kwargs["total"], "shown": kwargs["disable"] is not True, "desc": kwargs["desc"],
                         "done": 0})

        def update(self, n=1):
            bars[-1]["done"] += n

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    monkeypatch.setattr(mirror, "CHUNK", 4)
    bucket = tmp_path / "bucket"
    _put(bucket, "logs/part-0.csv", "a\n1\n")
    _put(bucket, "logs/part-1.csv", "a\n" + "2\n" * 10)
    _sync(bucket, "logs", tmp_path)
    _sync(bucket, "logs", tmp_path)
    assert bars[0] == {"total": 26, "shown": True, "desc": f"mirror 2 object(s) of {bucket / 'logs'}", "done": 26}
    assert bars[1]["total"] == 0 and not bars[1]["shown"]


def test_one_object_is_mirrored_as_that_file_and_nothing_there_is_an_error(tmp_path):
    bucket = tmp_path / "bucket"
    _put(bucket, "catalog/products.csv", "sku,name\n1,Heat\n")
    report, written = _sync(bucket, "catalog/products.csv", tmp_path)
    assert (report.copied, written["file"]) == (1, "products.csv")
    assert mirror._local_source(tmp_path / "m" / "objects", written) == tmp_path / "m" / "objects" / "products.csv"
    with pytest.raises(DataError, match="no object or prefix there"):
        _sync(bucket, "nothing-here", tmp_path)


class _FailingReads:
    """The local filesystem, except that reading object `key` fails after its first block (a
    connection dropped mid-copy)."""

    def __init__(self, key: str, on_failure):
        self.local, self.key, self.on_failure = fs.LocalFileSystem(), key, on_failure

    def get_file_info(self, what):
        return self.local.get_file_info(what)

    def open_input_stream(self, path):
        stream = self.local.open_input_stream(path)
        if not path.endswith(self.key):
            return stream
        failing, on_failure = self.key, self.on_failure

        class Stream:
            reads = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                stream.close()

            def read(self, n):
                Stream.reads += 1
                if Stream.reads > 1:
                    on_failure()
                    raise OSError(f"AWS Error NETWORK_CONNECTION while reading {failing}")
                return stream.read(n)

        return Stream()


def test_an_interrupted_copy_leaves_no_file_and_the_next_sync_copies_it(tmp_path, monkeypatch):
    bucket, local = tmp_path / "bucket", tmp_path / "m" / "objects"
    _put(bucket, "logs/part-0.csv", "a\n1\n")
    _put(bucket, "logs/part-1.csv", "a\n" + "2\n" * 100)
    monkeypatch.setattr(mirror, "CHUNK", 8)
    seen = []  # while the copy runs, only a hidden .tmp- file holds its bytes (a kill leaves no half part)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        _sync(bucket, "logs", tmp_path, filesystem=_FailingReads(
            "part-1.csv", lambda: seen.append(((local / "part-1.csv").exists(), [p.name for p in local.glob(".tmp-*")]))))
    assert seen == [(False, [".tmp-part-1.csv"])]
    assert not (local / "part-1.csv").exists() and not list(local.glob(".tmp-*"))  # no part passes for whole
    assert not (tmp_path / "m" / "manifest.json").exists()
    report, _ = _sync(bucket, "logs", tmp_path)
    assert report.copied == 2 and _tree(local)["part-1.csv"] == "a\n" + "2\n" * 100


def test_the_errors_name_the_source_and_tell_a_network_failure_from_a_wrong_address(tmp_path):
    url, local = "s3://shop/orders/", tmp_path / "objects"
    network = OSError("AWS Error NETWORK_CONNECTION during HeadObject operation")
    gone = mirror._unavailable_or_bad(url, network, local)
    assert isinstance(gone, SourceUnavailable) and str(gone) == (
        f"could not read {url} (AWS Error NETWORK_CONNECTION during HeadObject operation); nothing of it is "
        "mirrored here yet")
    local.mkdir()
    assert f"the last mirror of it is {local} (set data.source.path" in str(mirror._unavailable_or_bad(url, network, local))
    refused = mirror._unavailable_or_bad(url, OSError("AWS Error ACCESS_DENIED during HeadObject operation: 403"), local)
    assert isinstance(refused, DataError) and "check the bucket, the key and the credentials" in str(refused)


def test_an_s3_source_is_mirrored_at_each_ingest_and_read_anew_when_a_part_arrives(tmp_path, monkeypatch):
    """Ingest lists the files to read once (syncing the mirror, which names the ingest) and then
    reads that mirror: a part that lands in between is read by the next ingest, not half by this one."""
    bucket = tmp_path / "bucket"
    header = "customer_id,product_sku,purchased_at,product_name\n"
    _put(bucket, "orders/orders-1.csv", header + "c1,s1,1100000000,Heat\nc2,s2,1100000001,Fargo\n")
    _put(bucket, "orders/_SUCCESS", "")
    opened = []

    def from_uri(uri):
        assert uri.startswith("s3://shop/")
        opened.append(uri)
        return fs.LocalFileSystem(), str(bucket / uri.removeprefix("s3://shop/"))

    monkeypatch.setattr(mirror, "open_store", from_uri)
    cfg = DataConfig(name="shop", data_root=tmp_path / "data", source=SourceConfig(
        format="generic", path="s3://shop/orders/", columns={"user_id": "customer_id", "item_id": "product_sku",
                                                             "timestamp": "purchased_at", "title": "product_name"}))
    first = ingest(cfg)
    assert len(opened) == 1  # one sync per ingest: reading the rows reads the mirror
    again = ingest(cfg)
    assert again.reused and again.path == first.path
    _put(bucket, "orders/orders-2.csv", header + "c3,s1,1100000002,Heat\n")
    third = ingest(cfg)
    assert not third.reused and third.path != first.path
    import pandas as pd

    assert len(pd.read_parquet(third.path / "interactions.parquet")) == 3
    assert ingest_target(cfg)[2] == [mirror.mirror_path("s3://shop/orders/", cfg.data_root).resolve() / "objects" / f
                                     for f in ("orders-1.csv", "orders-2.csv")]
