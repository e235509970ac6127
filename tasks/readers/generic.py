"""The generic reader: your own interaction log (one file or a folder of parts, with titles in it or
in an items file) mapped to our columns by `data.source.columns`, parts alike converted together."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from schemas.config import DataConfig
from schemas.errors import DataError
from tasks.readers.parts import interaction_parts, part_name, partition_values
from tasks.readers.tables import (
    JSON_SUFFIXES,
    SourceTable,
    read_source_table,
    read_table,
    refuse_nested,
    table_suffix,
)
from tasks.readers.values import (
    DATE_LIKE,
    as_ids,
    refuse_incomplete_rows,
    require_columns,
    to_float,
    to_int_timestamps,
    unit_of_median,
)

log = logging.getLogger(__name__)


def _newest_titles(item_ids: pd.Series, titles: pd.Series, timestamps: pd.Series, path: Path) -> pd.DataFrame:
    """Each item's title from the interactions themselves: the title of its newest interaction.

    Products get renamed, so a log can spell one item two ways; the newest name is the one users
    see now (and type into a history). Said in a warning with examples, never silently.
    """
    rows = pd.DataFrame({"item_id": item_ids.array, "title": titles.array, "at": timestamps.to_numpy()})
    rows = rows.sort_values("at", kind="stable")  # file order among equal times: the later row wins
    stripped = rows["title"].astype("string").str.strip()
    spellings = stripped.groupby(rows["item_id"]).nunique()
    renamed = spellings[spellings > 1].index
    titled = stripped.notna() & (stripped != "")  # a row without a title never hides one with it
    newest = pd.concat([rows[~titled], rows[titled]]).drop_duplicates("item_id", keep="last")
    if len(renamed):
        first = renamed[0]
        old = stripped[(rows["item_id"] == first) & titled].drop_duplicates().tolist()
        log.warning("%s: %d item(s) have more than one title; each gets the title of its newest interaction, "
                    "e.g. item %s: %s", path, len(renamed), first, " -> ".join(map(repr, old[-3:])))
    return newest[["item_id", "title"]]


def _mapped_columns(cfg: DataConfig) -> dict[str, str]:
    """Our column -> the source's (`data.source.columns`, else the same name)."""
    return {k: cfg.source.columns.get(k, k) for k in ("user_id", "item_id", "timestamp", "rating", "title")}


def _part_rows(df: pd.DataFrame, path: Path, cfg: DataConfig, col: dict[str, str], titled: bool) -> tuple[pd.DataFrame, str]:
    """One part's interactions (or those of parts alike, `_interaction_rows`) in our columns
    (user_id, item_id, timestamp as unix seconds, rating, title: None where an items file has
    them), and the unit its timestamps were read in; DataError naming the part, its lines and values."""
    # (CSV and a workbook's rows: line or row 1 is the header; JSON lines have none)
    first_line = None if path.suffix == ".parquet" else 1 if table_suffix(path) in JSON_SUFFIXES else 2
    require_columns(df, [col["user_id"], col["item_id"], col["timestamp"]] + ([col["title"]] if titled else []), path,
                    cfg.source.columns)
    refuse_nested(df, col.values(), path)
    refuse_incomplete_rows(df, [col["user_id"], col["item_id"], col["timestamp"]], path, first_line)
    timestamps, unit = to_int_timestamps(df[col["timestamp"]], path, col["timestamp"], cfg.source.timestamp_unit,
                                         first_line, cfg.source.timestamp_format, cfg.source.timezone)
    return pd.DataFrame({  # (.array: Arrow strings stay Arrow, not one Python string per row)
        "user_id": df[col["user_id"]].array, "item_id": df[col["item_id"]].array,
        "timestamp": timestamps.to_numpy(),
        "rating": to_float(df[col["rating"]], path, col["rating"], first_line, cfg.source.decimal).to_numpy()
        if col["rating"] in df else float("nan"),
        "title": df[col["title"]].array if titled else None,
    }), unit


def _time_form(values, unit: str, fmt: str | None = None) -> tuple | None:
    """How `to_int_timestamps` reads a part's timestamps (`values`, an Arrow column; `unit`: the
    setting; `fmt`: timestamp_format), told from Arrow alone, ending in the unit `to_int_timestamps`
    returns: ("datetime",) for Arrow timestamps, ("iso",) or (fmt,) for dates written as text,
    (kind, unit) for unix times, kind "int" or "float" as `to_numbers` casts them (one float among
    parts read together would make all of them float, which loses nanoseconds past 2**53). None
    where pandas must tell (a part then read alone)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(values.type):
        return ("datetime",)
    if unit == "iso":
        return (fmt or "iso",)
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        kind, numbers = "int" if pa.types.is_integer(values.type) else "float", values
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        if pc.any(pc.match_substring(values, "x", ignore_case=True)).as_py():
            return None  # (hexadecimal: `to_numbers` leaves it to pandas)
        kind = None
        for name, number_type in (("int", pa.int64()), ("float", pa.float64())):
            try:
                kind, numbers = name, pc.cast(values, number_type)
                break
            except pa.ArrowInvalid:
                continue
        if kind is None:  # mostly dates as text: fewer than half can be numbers, so it reads as text
            dates = pc.sum(pc.match_substring_regex(values, DATE_LIKE)).as_py() or 0
            return (fmt or "iso",) if unit == "auto" and dates * 2 > len(values) - values.null_count else None
    else:
        return None
    if unit != "auto":
        return (kind, unit)
    median = pc.quantile(pc.abs(numbers), q=0.5, interpolation="midpoint")[0].as_py()  # (pandas' median)
    return (kind, unit_of_median(median or 0.0))


def _batch_key(table: SourceTable, time_column: str, unit: str, fmt: str | None = None) -> tuple | None:
    """What makes parts alike (`_interaction_rows`): their kept columns' names and Arrow types, and
    how their timestamps read (`_time_form`). None for a part read alone: one a fallback read
    (pandas), one without the time column, or one whose timestamps pandas must look at."""
    if table.arrow is None or time_column not in table.arrow.column_names:
        return None
    form = _time_form(table.arrow.column(time_column), unit, fmt)
    return None if form is None else (tuple((f.name, f.type, f.nullable) for f in table.arrow.schema), form)


def _with_partition_columns(table: SourceTable, folder: Path | None) -> SourceTable:
    """`table` with the partition columns of its folders (`partition_values`) that it lacks (a column
    the file has keeps its own values), as text."""
    import pyarrow as pa

    values = partition_values(table.path, folder) if folder else {}
    for key, value in values.items():
        if table.arrow is not None and key not in table.arrow.column_names:
            n = table.arrow.num_rows
            column = pa.nulls(n, pa.large_string()) if value is None else pa.repeat(pa.scalar(value, pa.large_string()), n)
            table.arrow = table.arrow.append_column(key, column)
        elif table.frame is not None and key not in table.frame.columns:
            table.frame[key] = pd.Series(value, index=table.frame.index, dtype="string")
    return table


def _interaction_rows(cfg: DataConfig, parts: list[Path], folder: Path | None, titled: bool,
                      batched: bool = True) -> tuple[list[pd.DataFrame], dict[str, str], bool, list[str]]:
    """Every part's interactions (`_part_rows`), in part order; each part's timestamp unit by its
    name (`part_name`); whether any part has ratings; the first part's first timestamps as written
    (examples for the ingest manifest).

    Parts alike (`_batch_key`: in a data lake, mostly all of them) are checked and converted
    together, as one table, into what they give one by one: a lake of 100,000 small parts pays
    pandas' per-call costs once, not per part (benchmarks/readers.py --source lake-parts). Parts
    that fail a check together are read again one by one (`batched=False` reads all so), so that
    the error names the part and its lines, and the first error in part order is the one raised."""
    import pyarrow as pa

    col = _mapped_columns(cfg)
    frames: list[pd.DataFrame] = []
    units: dict[str, str] = {}
    found = {"rated": False, "examples": []}

    def add(rows: pd.DataFrame, unit: str, df: pd.DataFrame, tables: list[SourceTable]) -> None:
        frames.append(rows)
        units.update({part_name(t.path, folder): unit for t in tables})
        found["rated"] = found["rated"] or col["rating"] in df
        found["examples"] = found["examples"] or [str(v) for v in df[col["timestamp"]].head(min(3, len(tables[0])))]

    def convert(tables: list[SourceTable], key: tuple | None) -> None:
        if len(tables) > 1:
            merged = pa.concat_tables([t.arrow.replace_schema_metadata() for t in tables])
            df = SourceTable(tables[0].path, merged, None, tables[0].names, tables[0].nested).to_pandas()
            try:
                rows, unit = _part_rows(df, tables[0].path, cfg, col, titled)
            except DataError:
                rows, unit = None, None  # (one by one below: the error names its part)
            _, form = key
            if unit is not None and unit == form[-1]:  # (a form ends in the unit `_time_form` saw in each part)
                return add(rows, unit, df, tables)
        for table in tables:
            df = table.to_pandas()
            add(*_part_rows(df, table.path, cfg, col, titled), df, [table])

    alike: list[SourceTable] = []  # parts read, alike, not yet converted
    alike_key = None
    for part in parts:
        try:
            table = _with_partition_columns(read_source_table(part, cfg.source.encoding, cfg.source.delimiter,
                                                               set(col.values()), cfg.source.sheet), folder)
        except DataError:
            convert(alike, alike_key)  # (an earlier part's error comes first)
            raise
        key = _batch_key(table, col["timestamp"], cfg.source.timestamp_unit, cfg.source.timestamp_format) if batched else None
        if alike and (key is None or key != alike_key):
            convert(alike, alike_key)
            alike = []
        alike.append(table)
        alike_key = key
    if alike:
        convert(alike, alike_key)
    return frames, units, found["rated"], found["examples"]


def read_generic(cfg: DataConfig, inter_path: Path, items_path: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CSV/TSV/Parquet/JSON-lines/Excel interactions (+ items file) with `source.columns` mapping ours -> theirs.

    A folder of parts (new files dropped into it, or a partitioned dataset's folders) is read part
    by part (`_interaction_rows`): each part's timestamps are read in their own unit (one job may
    write unix seconds, another ISO text), an error names the part and its rows, and a partitioned
    dataset's columns come back from its folder names (`partition_values`), so `columns` may map
    one of them.
    """
    col = _mapped_columns(cfg)
    folder = inter_path if inter_path.is_dir() else None
    frames, units, rated, examples = _interaction_rows(cfg, interaction_parts(inter_path, items_path), folder,
                                                       titled=items_path is None)
    if "rating" in cfg.source.columns and not rated:  # mapped, so meant: a misspelt name would skip its checks
        raise DataError(f"{inter_path}: missing column(s) [{col['rating']!r}] (data.source.columns maps rating to it;"
                        " leave rating out of columns if the log has none)")
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    timestamps = rows["timestamp"].astype("Int64" if rows["timestamp"].isna().any() else "int64")
    # (as text before titles are picked: parts may hold item 10 as a number and as "10")
    item_ids = as_ids(rows["item_id"], inter_path, col["item_id"])
    item_col = {k: cfg.source.items_columns.get(k, col[k]) for k in ("item_id", "title")}  # (the items file's)
    if items_path is not None:
        items_df = read_table(items_path, cfg.source.encoding, cfg.source.delimiter, set(item_col.values()),
                               cfg.source.items_sheet)
        require_columns(items_df, list(item_col.values()), items_path, *(
            (cfg.source.items_columns, "items_columns") if cfg.source.items_columns else (cfg.source.columns,)))
        refuse_nested(items_df, list(item_col.values()), items_path)
    else:  # titles in the interactions file itself
        items_df = _newest_titles(item_ids, rows["title"], timestamps, inter_path).set_axis(
            list(item_col.values()), axis=1)
    interactions = pd.DataFrame(
        {
            "user_id": as_ids(rows["user_id"], inter_path, col["user_id"]),
            "item_id": item_ids,
            "timestamp": timestamps,
            "rating": rows["rating"].astype("float64") if rated else None,
        }
    )
    title = items_df[item_col["title"]].astype("string")
    # What ingest records in its manifest (and a failed range check shows): the unit read (per
    # part when they differ), raw examples.
    unit = next(iter(units.values())) if len(set(units.values())) == 1 else ", ".join(f"{k}: {v}" for k, v in units.items())
    interactions.attrs["timestamp"] = {"column": col["timestamp"], "unit": unit,
                                       "examples": examples}
    items_source = items_path or inter_path
    return interactions, pd.DataFrame({"item_id": as_ids(items_df[item_col["item_id"]], items_source, item_col["item_id"]),
                                       "title": title.str.strip()})
