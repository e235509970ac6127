"""Parts alike are checked and converted together (`tasks.readers.generic._interaction_rows`), for the
speed of a lake of many small parts; the reference is the same parts read one by one
(`batched=False`), which is how every part was read before. On seeded lakes that mix formats,
timestamp forms and units, partition folders and pandas' fallbacks, both must give the same
rows, units, examples and, for a lake with a defect, the same error."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.readers.generic as generic
from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError
from tasks.readers.values import to_int_timestamps

COLUMNS = {"user_id": "user", "item_id": "item", "timestamp": "ts", "title": "title"}
FORMATS = ["parquet", "csv", "csv.gz", "jsonl", "jsonl.gz"]
# How a part writes its times: unix numbers in a unit, as ints or with decimals; ISO-8601 text
# (offsets mixed in); Arrow timestamps (Parquet only).
TIME_FORMS = ["s", "ms", "us", "ns", "s-float", "iso", "datetime"]
START = 1_700_000_000  # 2023-11-14, in unix seconds


def _times(form: str, seconds: list[int]) -> list:
    if form == "s-float":
        return [s + 0.5 for s in seconds]
    if form == "iso":
        return [pd.Timestamp(s, unit="s", tz="UTC").tz_convert("+02:00" if s % 2 else "UTC").isoformat() for s in seconds]
    if form == "datetime":
        return list(pd.to_datetime(seconds, unit="s", utc=True))
    scale = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[form]
    return [s * scale + (scale - 1 if scale > 1 else 0) for s in seconds]  # (the last digit moved: no rounding up)


def _write_part(path: Path, fmt: str, rows: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":  # (a column of values of more than one type, as the defects make it: as text)
        mixed = [c for c in rows if rows[c].dropna().map(type).nunique() > 1]
        rows = rows.astype({c: "string" for c in mixed})
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path)
        return
    if fmt.startswith("csv"):
        text = rows.to_csv(index=False)
    else:
        text = "".join(json.dumps({k: (v.isoformat() if isinstance(v, pd.Timestamp) else v)
                                   for k, v in row.items() if v is not None}) + "\n"
                       for row in rows.astype(object).where(rows.notna(), None).to_dict("records"))
    if fmt.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def _lake(root: Path, seed: int, defect: str | None = None) -> Path:
    """A folder of 20..40 parts in runs of alike ones (a run: one format, time form, id type,
    partition folder, with or without ratings), some parts a fallback reads (a JSON user id a number
    on one line and text on others); `defect`: one part, at random, gets it."""
    rng = random.Random(seed)
    lake = root / f"lake-{seed}"
    n_parts = rng.randint(20, 40)
    bad_part = rng.randrange(n_parts) if defect else -1
    part, second = 0, START
    while part < n_parts:
        fmt, form = rng.choice(FORMATS), rng.choice(TIME_FORMS)
        form = "iso" if form == "datetime" and fmt != "parquet" else form
        number_ids, rated, folder = rng.random() < 0.3, rng.random() < 0.5, rng.choice(["", "region=eu/", "dt=x/h=1/"])
        for _ in range(rng.randint(1, 6)):
            if part == n_parts:
                break
            n = rng.randint(1, 8)
            seconds = [second + i for i in range(n)]
            second += n
            rows = pd.DataFrame({
                "user": [rng.randint(1, 9) if number_ids else f"u{rng.randint(1, 9)}" for _ in range(n)],
                "item": [rng.randint(1, 30) for _ in range(n)],
                "ts": _times(form, seconds),
                "title": [f"Item {rng.randint(1, 30)}" for _ in range(n)],
            })
            if rated:
                rows["rating"] = [float(rng.randint(1, 5)) for _ in range(n)]
            if fmt.startswith("jsonl") and not number_ids and rng.random() < 0.2:
                rows["user"] = [int(u[1:]) if i == 0 else u for i, u in enumerate(rows["user"])]  # (read line by line)
            if part == bad_part:
                rows = _with_defect(rows, defect, rng)
            _write_part(lake / f"{folder}part-{part:03d}.{fmt}", fmt, rows)
            part += 1
    return lake


def _with_defect(rows: pd.DataFrame, defect: str, rng: random.Random) -> pd.DataFrame:
    rows = rows.astype({"ts": object, "user": object})
    at = rng.randrange(len(rows))
    if defect == "time":
        rows.loc[at, "ts"] = "yesterday"
    elif defect == "user":
        rows.loc[at, "user"] = None
    elif defect == "column":
        rows = rows.drop(columns="item")
    elif defect == "rating":
        rows["rating"] = ["five" if i == at else 1.0 for i in range(len(rows))]
    return rows


def _cfg(root: Path, lake: Path, unit: str = "auto") -> DataConfig:
    return DataConfig(name="lake", data_root=root / "data", input_roots=[root], k_core=0, source=SourceConfig(
        format="generic", path=str(lake), columns=COLUMNS, timestamp_unit=unit))


def _read(cfg: DataConfig, lake: Path, batched: bool):
    parts = generic.interaction_parts(lake)
    frames, units, rated, examples = generic._interaction_rows(cfg, parts, lake, titled=True, batched=batched)
    return pd.concat(frames, ignore_index=True), units, rated, examples


@pytest.mark.parametrize("seed", range(12))
def test_parts_read_together_give_what_they_give_one_by_one(tmp_path, monkeypatch, seed):
    lake = _lake(tmp_path, seed)
    cfg = _cfg(tmp_path, lake)
    rows, units, rated, examples = _read(cfg, lake, batched=True)
    want_rows, want_units, want_rated, want_examples = _read(cfg, lake, batched=False)
    pd.testing.assert_frame_equal(rows, want_rows)
    assert (units, rated, examples) == (want_units, want_rated, want_examples)
    # And the whole reader: interactions, items, and what the manifest records.
    batched = generic.read_generic(cfg, lake, None)
    one_by_one = generic._interaction_rows
    monkeypatch.setattr(generic, "_interaction_rows", lambda *a, **kw: one_by_one(*a, **{**kw, "batched": False}))
    reference = generic.read_generic(cfg, lake, None)
    for got, want in zip(batched, reference, strict=True):
        pd.testing.assert_frame_equal(got, want)
    assert batched[0].attrs == reference[0].attrs


@pytest.mark.parametrize("defect", ["time", "user", "column", "rating"])
@pytest.mark.parametrize("seed", range(3))
def test_a_defect_is_named_as_one_by_one_names_it(tmp_path, seed, defect):
    lake = _lake(tmp_path, seed, defect)
    cfg = _cfg(tmp_path, lake)
    with pytest.raises(DataError) as batched:
        _read(cfg, lake, batched=True)
    with pytest.raises(DataError) as one_by_one:
        _read(cfg, lake, batched=False)
    assert str(batched.value) == str(one_by_one.value)
    assert "part-" in str(batched.value)  # (it names the part)


def test_a_read_error_after_a_defect_in_an_earlier_part_is_not_the_one_raised(tmp_path):
    """Parts are read before the run they belong to is checked; an unreadable part must not hide
    an earlier part's defect."""
    lake = tmp_path / "lake"
    good = pd.DataFrame({"user": ["u1", "u2"], "item": [1, 2], "ts": [START, START + 1], "title": ["A", "B"]})
    _write_part(lake / "part-0.parquet", "parquet", good)
    _write_part(lake / "part-1.parquet", "parquet", good.assign(user=["u1", None]))
    (lake / "part-2.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"part-1\.parquet: 1 row\(s\) without a value"):
        _read(_cfg(tmp_path, lake), lake, batched=True)


def test_alike_parts_are_converted_once(tmp_path, monkeypatch):
    """What the batching is for: 30 parts alike (one run), however many rows, one conversion; a
    part whose seconds turn to milliseconds starts another run, with its own unit."""
    lake = tmp_path / "lake"
    for i in range(30):
        seconds = [START + 10 * i, START + 10 * i + 1]
        ts = [s * 1000 for s in seconds] if i >= 20 else seconds
        _write_part(lake / f"day={i:02d}/part-{i:02d}.csv", "csv", pd.DataFrame(
            {"user": ["u1", "u2"], "item": [i, i + 1], "ts": ts, "title": ["A", "B"]}))
    calls = []
    real = generic._part_rows
    monkeypatch.setattr(generic, "_part_rows", lambda df, *a: calls.append(len(df)) or real(df, *a))
    rows, units, _, examples = _read(_cfg(tmp_path, lake), lake, batched=True)
    assert calls == [40, 20]
    assert units == {f"day={i:02d}/part-{i:02d}.csv": "s" if i < 20 else "ms" for i in range(30)}
    assert rows["timestamp"].tolist() == [START + 10 * i + j for i in range(30) for j in (0, 1)]
    assert examples == [str(START), str(START + 1)]  # (the first part's, not the run's)


def test_whole_nanoseconds_are_not_read_with_a_neighbours_decimals(tmp_path):
    """One part's nanoseconds as whole numbers, the next one's with a decimal point: read together
    as floats, the first would lose its last digits (float64 holds 2**53 exactly) and round into
    the next second; so they are no parts alike."""
    lake = tmp_path / "lake"
    part = pd.DataFrame({"user": ["u1"], "item": [1], "ts": ["1700000000999999999"], "title": ["A"]})
    _write_part(lake / "part-0.csv", "csv", part)
    _write_part(lake / "part-1.csv", "csv", part.assign(ts=["1700000001000000000.0"]))
    rows, units, _, _ = _read(_cfg(tmp_path, lake), lake, batched=True)
    assert rows["timestamp"].tolist() == [1_700_000_000, 1_700_000_001]
    assert units == {"part-0.csv": "ns", "part-1.csv": "ns"}


@pytest.mark.parametrize("unit", ["auto", "s", "ms", "iso"])
@pytest.mark.parametrize("values", [
    [START, START + 1], [START * 1000], [START * 10**6 + 7], [START * 10**9 + 999_999_999],
    [float(START) + 0.25], ["1700000000", "1700000001"], ["1700000000.5"], [" 1700000000"],
    ["2026-12-01T10:00:00Z", "2026-12-01 10:00:00+02:00"], ["2026-12-01", "1700000000", "1700000001"],
    ["2026-12-01", "2026-12-02", "1700000001"], ["0x10"], ["99999999999", "100000000001"], [0], [-START],
])
def test_time_form_tells_the_unit_to_int_timestamps_reads(values, unit):
    """`_time_form` decides from Arrow alone how a part's times read; where it decides, the unit
    must be the one `to_int_timestamps` (the reference) returns for the same values."""
    column = pa.chunked_array([pa.array(values)])
    form = generic._time_form(column, unit)
    try:
        _, want = to_int_timestamps(column.to_pandas(), Path("part.csv"), "ts", unit)
    except DataError:
        want = None
    if form is not None:
        assert form[-1] == want or want is None  # (a part whose times fail is read alone, and fails there)
    if unit == "auto" and values in (["2026-12-01T10:00:00Z", "2026-12-01 10:00:00+02:00"], [START * 1000]):
        assert form is not None  # (the common forms are told without pandas)


def test_time_form_of_arrow_timestamps(tmp_path):
    column = pa.chunked_array([pa.array(pd.to_datetime([START], unit="s", utc=True))])
    assert generic._time_form(column, "auto") == ("datetime",)
    assert to_int_timestamps(column.to_pandas(), Path("p"), "ts")[1] == "datetime"
