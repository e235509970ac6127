"""Data as of a time: `data.as_of`, `data.train_window`, and a source folder of dated parts."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pyarrow.parquet as pq
import pytest

from schemas.config import DataConfig
from schemas.errors import DataError
from tasks.data import ingest, prepare

DAY = 86400
T0 = 10**9  # 2001-09-09


def parts_folder(root, days_by_part: dict[str, range]):
    """A folder of dated parts: 12 users x 6 items, one interaction per user per listed day."""
    folder = root / "inputs" / "parts"
    folder.mkdir(parents=True, exist_ok=True)
    for name, days in days_by_part.items():
        rows = [(f"u{u}", f"i{(u + d) % 6}", T0 + d * DAY + u) for d in days for u in range(12)]
        pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_parquet(folder / name)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(6)], "title": [f"Title {i}" for i in range(6)]})
    items.to_csv(root / "inputs" / "items.csv", index=False)
    return folder


def cfg(root, **fields) -> DataConfig:
    return DataConfig(name="parts", data_root=root, k_core=0, min_timestamp=datetime(2000, 1, 1, tzinfo=UTC),
                      source={"format": "generic", "path": str(root / "inputs" / "parts"),
                              "items_path": str(root / "inputs" / "items.csv")}, **fields)


def at(day: float) -> datetime:
    return datetime.fromtimestamp(T0 + day * DAY, UTC)


def test_as_of_sees_only_earlier_interactions_and_a_quiet_stretch_reuses_the_sequences(tmp_path):
    parts_folder(tmp_path, {"interactions-2001-09.parquet": range(0, 10), "interactions-2001-10.parquet": range(30, 40)})
    _, early, m_early = prepare(cfg(tmp_path, as_of=at(20)))
    assert m_early["stats"]["interactions"] == 12 * 10  # days 0-9 only
    records = pd.concat(pq.read_table(early.path / f"{s}.parquet").to_pandas() for s in ("train", "valid", "test"))
    assert records["timestamp"].max() < T0 + 20 * DAY
    # As of day 25: no interaction since day 9, so the same rows: the same folder, reused.
    _, same, _ = prepare(cfg(tmp_path, as_of=at(25)))
    assert same.path == early.path and same.reused
    _, later, m_later = prepare(cfg(tmp_path, as_of=at(50)))
    assert later.path != early.path and m_later["stats"]["interactions"] == 12 * 20


def test_train_window_keeps_the_last_days_before_the_newest_interaction(tmp_path):
    parts_folder(tmp_path, {"interactions-a.parquet": range(0, 40)})
    _, seq, manifest = prepare(cfg(tmp_path, as_of=at(100), train_window="10d"))
    # Newest interaction on day 39; the window is the 10 days up to it: days 30-39.
    assert manifest["stats"]["interactions"] == 12 * 10
    settings = manifest["settings"]
    assert settings["window_end"] - settings["window_start"] == 10 * DAY


def test_a_new_part_changes_the_ingest_fingerprint_and_an_unchanged_folder_does_not(tmp_path):
    folder = parts_folder(tmp_path, {"interactions-1.parquet": range(0, 5)})
    first = ingest(cfg(tmp_path))
    assert ingest(cfg(tmp_path)).fingerprint == first.fingerprint
    parts_folder(tmp_path, {"interactions-2.parquet": range(5, 8)})
    second = ingest(cfg(tmp_path))
    assert second.fingerprint != first.fingerprint
    assert pq.read_metadata(second.path / "interactions.parquet").num_rows == 12 * 8  # both parts read
    assert sorted(p.name for p in folder.iterdir()) == ["interactions-1.parquet", "interactions-2.parquet"]


def test_as_of_before_the_data_is_refused_naming_where_it_starts(tmp_path):
    parts_folder(tmp_path, {"interactions-1.parquet": range(3, 6)})
    with pytest.raises(DataError, match=r"no interaction before data.as_of=.*the data starts at 2001-09-12"):
        prepare(cfg(tmp_path, as_of=at(1)))
    assert not (tmp_path / "sequences").exists()


def test_an_empty_parts_folder_is_refused(tmp_path):
    folder = tmp_path / "inputs" / "parts"
    folder.mkdir(parents=True)
    (tmp_path / "inputs" / "items.csv").write_text("item_id,title\ni0,A\n")
    with pytest.raises(DataError, match="no interaction parts"):
        ingest(cfg(tmp_path))
