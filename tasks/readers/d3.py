"""D3 / BIGRec CSVs: a dataset already split into train/valid/test rows of histories and targets,
whose users' sequences are stitched back together."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from schemas.errors import DataError
from tasks.readers.files import open_text, read_csv
from tasks.readers.values import require_columns

D3_SPLITS = ("train", "valid", "test")
# Sequences of a D3 CSV without timestamps are ordered by row (D3 sorts samples by time);
# we place them on a synthetic clock: row r's target at ORIGIN + r * TICKS, the history items of
# a user's first row on the ticks just before it (histories hold <= 50 items).
D3_ORDINAL_ORIGIN = 1_500_000_000
D3_TICKS_PER_ROW = 64


def _literal_list(value: object, path: Path, column: str, line: int) -> list:
    try:
        parsed = ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError):
        raise DataError(f"{path}: line {line}, column {column!r} is not a Python list literal: {str(value)[:60]!r}") from None
    if not isinstance(parsed, (list, tuple)):
        raise DataError(f"{path}: line {line}, column {column!r} is not a list: {str(value)[:60]!r}")
    return list(parsed)


def _d3_time(value: object, path: Path, column: str, line: int) -> int:
    """A D3 CSV's unix time (text such as "1541030400" or "1.5410304e9"); DataError naming the line."""
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: line {line}, column {column!r} holds {str(value)[:40]!r}, not a unix time") from None


def d3_files(folder: Path) -> tuple[list[Path], Path]:
    """The split CSVs (in split order, train/valid/test sub-folders or `<split>*.csv` files) and
    the info file (the first info/*.txt) that `read_d3_csv` reads of a folder."""
    csvs = [p for s in D3_SPLITS for p in sorted((folder / s).glob("*.csv")) + sorted(folder.glob(f"{s}*.csv"))]
    infos = sorted((folder / "info").glob("*.txt"))
    if not csvs or not infos:
        raise DataError(f"{folder}: expected D3 CSVs under train/ valid/ test/ and an info/*.txt file")
    return csvs, infos[0]


def read_d3_csv(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """D3/BIGRec CSV splits (train/valid/test sub-folders or files) + the info file.

    Each user's sequence is stitched back from their rows: the first row's history, then every
    row's target, in split order (train, valid, test) and row order. Real timestamps are used
    when the CSV has them (`timestamp`, `history_timestamp`); otherwise the global row order is
    kept on a synthetic clock, which preserves D3's chronological order across users.
    """
    csvs, info = d3_files(folder)
    items = {}
    for n, line in enumerate(open_text(info).splitlines(), start=1):
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{info}: line {n} has no tab-separated title and id")
        items[parts[-1].strip()] = parts[-2].strip()  # `[sid<TAB>]title<TAB>item_id`
    rows: list[tuple[str, str, int]] = []
    seen_users: set[str] = set()
    step = 0  # global row number over all CSVs, in split and row order (= time order in D3)
    for path in csvs:
        df = read_csv(path, dtype=str, keep_default_na=False)
        require_columns(df, ["user_id", "history_item_id", "item_id"], path)
        has_ts = "timestamp" in df.columns and "history_timestamp" in df.columns
        for line, rec in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
            step += 1
            tick = D3_ORDINAL_ORIGIN + step * D3_TICKS_PER_ROW
            ts = _d3_time(rec.timestamp, path, "timestamp", line) if has_ts else tick
            if rec.user_id not in seen_users:  # first row of the user: its history comes first
                seen_users.add(rec.user_id)
                hist = _literal_list(rec.history_item_id, path, "history_item_id", line)
                hts = _literal_list(rec.history_timestamp, path, "history_timestamp", line) if has_ts else []
                if has_ts and len(hts) != len(hist):
                    raise DataError(f"{path}: line {line}: history_timestamp holds {len(hts)} time(s) for the "
                                    f"{len(hist)} item(s) of history_item_id")
                for i, h in enumerate(hist):
                    h_ts = _d3_time(hts[i], path, "history_timestamp", line) if has_ts else tick - (len(hist) - i)
                    rows.append((rec.user_id, str(h).strip(), h_ts))
            rows.append((rec.user_id, str(rec.item_id).strip(), ts))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype("string"),
            "item_id": inter["item_id"].astype("string"),
            "timestamp": inter["timestamp"].astype("int64"),
            "rating": pd.Series([None] * len(inter), dtype="float64"),
        }
    )
    catalogue = pd.DataFrame({"item_id": pd.Series(list(items), dtype="string"), "title": list(items.values())})
    return interactions, catalogue
