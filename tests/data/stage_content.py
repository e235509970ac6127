"""What the data stages write for fixed inputs, pinned per version of the code that names their
folders (`tasks.storage.CODE_VERSION`, ingest's own `tasks.data.INGEST_VERSION`, and
`tasks.data.READER_VERSIONS` for one source format).

A finished stage folder is reused whenever its name matches, and the name covers the inputs and
settings, not the code. So code that writes something else for the same inputs must bump the
version (else every data root keeps serving the output written before), then record the new
digests here: the tests that compare against these fail until both are done.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

PINNED = {
    # (CODE_VERSION, INGEST_VERSION, source format, reader version): {stage: content digest}
    ("data-v2", 2, "recbole_package", 1): {"ingested": "a781305de5e0c20b", "sequences": "d25b3dc0629af135"},
    ("data-v2", 2, "generic", 2): {"ingested": "943dec2fd4d8f039", "sequences": "5f29e3eb2f9b0241"},
}


def write_purchase_log(path: Path, users: int, renamed_from_day: int | None = None) -> None:
    """A generic log with titles in it: user u buys items u .. u+5 (mod 10) on days 10u .. 10u+5,
    so a longer log is the shorter one with newer rows appended, as a log grows; from
    `renamed_from_day` on, item 3 is sold as "Item 3 Deluxe"."""
    rows = ["user,item,ts,title"]
    for u in range(users):
        for step in range(6):
            item, day = (u + step) % 10, 10 * u + step
            renamed = item == 3 and renamed_from_day is not None and day >= renamed_from_day
            rows.append(f"u{u},i{item},{1_700_000_000 + 86_400 * day},Item {item}" + (" Deluxe" if renamed else ""))
    path.write_text("\n".join(rows) + "\n")


def content_digest(folder: Path) -> str:
    """sha256 of the tables of a stage folder: file names, column types and values (not the files'
    bytes or metadata, which carry library versions, nor the manifests, which carry fingerprints)."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.parquet")):
        table = pq.read_table(path)
        h.update(f"{path.name}\n{[(f.name, str(f.type)) for f in table.schema]}\n".encode())
        h.update(json.dumps(table.to_pydict(), default=str).encode())
    return h.hexdigest()[:16]


def check_pinned(source_format: str, ingested: Path, sequences: Path) -> None:
    from tasks.data import INGEST_VERSION, READER_VERSIONS
    from tasks.storage import CODE_VERSION

    key = (CODE_VERSION, INGEST_VERSION, source_format, READER_VERSIONS.get(source_format, 1))
    got = {"ingested": content_digest(ingested), "sequences": content_digest(sequences)}
    assert got == PINNED.get(key), (
        f"{source_format}: the data stages now write {got} for the same input, not what {key} named: bump "
        "CODE_VERSION in tasks/storage.py (a change in the sequences), INGEST_VERSION in tasks/data.py (a change "
        "in ingest) or the format's entry in tasks/data.READER_VERSIONS (one reader), so that folders written before are not reused, "
        f"and pin the new digests in {__file__}")
