"""A source's columns as our types: unix-second timestamps (numbers in any unit, ISO-8601 or a
strftime format, native datetimes, on a given clock), ratings, ids and titles; every error names
the file, the column and the rows at fault (`where_rows`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.errors import DataError


def require_columns(df: pd.DataFrame, columns: list[str], path: Path, mapping: dict | None = None,
                    setting: str = "columns") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        found = list(df.attrs.get("columns", df.columns))  # (all the file's, where it was read in part)
        hint = f" (data.source.{setting} maps {mapping})" if mapping else ""
        if numbers := [str(c) for c in found if re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*", str(c))]:
            hint += (f"; its first line reads as data ({numbers[0]!r} is a column name): a file written without a header "
                     "line (Spark's df.write.csv writes none unless .option('header', True)) needs one")
        raise DataError(f"{path}: missing column(s) {missing}{hint}; found {found}")


# Unix timestamps of plausible dates (1973..2286) in each unit: seconds < 1e10 <= ms < 1e13 <= us < 1e16 <= ns.
_UNIT_SCALE = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def to_numbers(values: pd.Series) -> pd.Series:
    """`pd.to_numeric(values, errors="coerce")`'s numbers, by Arrow's cast where `values` are Arrow
    strings that all read as int64 or as float64 (25M unix times in ~1 s; pandas takes ~8 s);
    else by pandas. A value that fails either cast goes to pandas, whose rules then decide (what
    does not read becomes null and the caller names its rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
        strings = pa.array(values)
        for kind in (pa.int64(), pa.float64()):
            try:
                parsed = pc.cast(strings, kind)
            except pa.ArrowInvalid:
                continue
            if kind == pa.int64() and pc.any(pc.match_substring(strings, "x", ignore_case=True)).as_py():
                break  # Arrow reads "0x10" as 16; pandas does not read hexadecimal
            exact = {pa.int64(): pd.Int64Dtype()}.get if parsed.null_count else None  # ints with nulls: not float
            return parsed.to_pandas(types_mapper=exact).set_axis(values.index).rename(values.name)
    return pd.to_numeric(values, errors="coerce")


def detect_unit(numbers: pd.Series) -> str:
    """The unit of numeric unix timestamps, from the magnitude of their median."""
    return unit_of_median(float(numbers.abs().median()) if numbers.notna().any() else 0.0)


def unit_of_median(median: float) -> str:
    """`detect_unit` for the median of the timestamps' absolute values."""
    for unit, limit in (("s", 1e11), ("ms", 1e14), ("us", 1e17)):
        if median < limit:
            return unit
    return "ns"


def where_rows(index: pd.Index, first_line: int | None = None) -> str:
    """How an error names rows: "lines [135, 140]" in a text file whose first data row is line
    `first_line` (after a header: 2), else "rows [133, 138]" (the table's rows, from 0). Lines
    as a file without blank lines or line breaks inside quoted fields counts them (the readers
    skip blank lines), so messages show the values too."""
    if first_line is None:
        return f"rows {list(index[:5])}"
    return f"lines {[int(i) + first_line for i in index[:5]]}"


# A written offset after a time of day ("T10:00Z", " 10:00:00+02:00", "10:00 +0200"): such a time is
# absolute; one without is a time of `timezone` (a date alone, "2026-12-06", ends in "-06": no offset).
_OFFSET = r"\d:\d\d(?::\d\d(?:[.,]\d+)?)?\s*(?:Z|UTC|GMT|[+-]\d\d(?::?\d\d)?)\s*$"
# A value that starts as a date does (2026-12-06, 06.12.2026, 12/06/26): never a number to pandas.
DATE_LIKE = r"^\s*\d{1,4}[-./]\d{1,2}[-./]\d{1,4}"


def to_int_timestamps(values: pd.Series, path: Path, column: str, unit: str = "auto",
                      first_line: int | None = None, fmt: str | None = None,
                      timezone: str = "UTC") -> tuple[pd.Series, str]:
    """(unix seconds as int64, the unit read). Accepts unix s/ms/us/ns numbers, ISO-8601 text
    (with or without offsets, mixed forms) or text in the strftime format `fmt`, and native
    datetime columns; `auto` tells them apart. A time without an offset is one of `timezone`
    (an IANA name): one the clock skipped is moved forward, one it repeated taken as the first.
    Names the rows that do not parse (`where_rows`). The unit read: s, ms, us, ns, iso, `fmt` or
    datetime."""
    if pd.api.types.is_datetime64_any_dtype(values):  # Parquet/Arrow timestamps, any resolution
        return _seconds(_localized(values, timezone) if values.dt.tz is None else values.dt.tz_convert("UTC")), "datetime"
    numbers = None
    if unit == "auto":  # mostly numbers: unix time (the rest are errors); else text
        numbers = to_numbers(values)
        unit = detect_unit(numbers) if numbers.notna().sum() * 2 >= values.notna().sum() else "iso"
    if unit == "iso":
        text = values.astype("string")
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format=fmt or "ISO8601")  # (no offset: as UTC)
        if timezone != "UTC":
            naive = parsed.notna() & ~text.str.contains(_OFFSET, case=False, regex=True).fillna(False).astype(bool)
            if naive.any():
                parsed = parsed.copy()
                parsed[naive] = _localized(parsed[naive].dt.tz_localize(None), timezone)
        bad = parsed.isna() & values.notna()
        out = _seconds(parsed)
        unit = fmt or "iso"
    else:
        num = to_numbers(values) if numbers is None else numbers  # (parsed once)
        bad = num.isna() & values.notna()
        out = num // _UNIT_SCALE[unit] if unit != "s" else num
    if bad.any():
        hint = ""
        if unit == "iso" and values[bad].astype("string").str.match(DATE_LIKE).any():
            hint = ("; dates written otherwise than ISO-8601 are read by data.source.timestamp_format, e.g. "
                    "'%d.%m.%Y %H:%M' for 06.12.2026 14:30, '%m/%d/%Y %I:%M %p' for 12/06/2026 02:30 PM")
        raise DataError(
            f"{path}: column {column!r} has {int(bad.sum())} value(s) that are not timestamps "
            f"(read as {unit}), e.g. {where_rows(values.index[bad], first_line)}: {list(values[bad][:5])}{hint}"
        )
    if out.isna().any():  # nulls are reported by validation, with the other expectations
        return out.astype("Float64").round().astype("Int64"), unit
    if out.dtype == "int64":  # whole seconds already (through float, they would be 2x the work)
        return out, unit
    return out.astype("float64").round().astype("int64"), unit


def _localized(naive: pd.Series, timezone: str = "UTC") -> pd.Series:
    """Naive datetimes as the instants they are in `timezone` (UTC), for `to_int_timestamps`: a time
    the clock skipped (spring forward) moved forward, one it repeated (fall back) the first."""
    if timezone == "UTC":
        return naive.dt.tz_localize("UTC")
    first = np.ones(len(naive), dtype=bool)  # (ambiguous: True = the daylight-saving one, which comes first)
    return naive.dt.tz_localize(timezone, ambiguous=first, nonexistent="shift_forward").dt.tz_convert("UTC")


def _seconds(parsed: pd.Series) -> pd.Series:
    """Timezone-aware datetimes of any resolution -> unix seconds (float, NaN for NaT); pandas 3
    parses to microseconds, so never assume nanoseconds (environment-notes.md)."""
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta("1s")).astype("Float64").astype("float64")


def to_float(values: pd.Series, path: Path, column: str, first_line: int | None = None,
             decimal: str = ".") -> pd.Series:
    """Numbers (a rating) as float64; text with `decimal` "," as its decimal mark ("4,5") read so.
    Names the rows that are no numbers."""
    text = isinstance(values.dtype, pd.StringDtype) or values.dtype == object
    num = to_numbers(values.astype("string").str.replace(",", ".", regex=False) if decimal == "," and text else values)
    bad = num.isna() & values.notna()
    if bad.any():
        comma = decimal == "." and text and values[bad].astype("string").str.fullmatch(r"\s*[-+]?\d*,\d+\s*").any()
        raise DataError(
            f"{path}: column {column!r} has {int(bad.sum())} non-numeric value(s), e.g. "
            f"{where_rows(values.index[bad], first_line)}: {list(values[bad][:5])}"
            + ("; a decimal comma (4,5) is read with data.source.decimal: ','" if comma else "")
        )
    return num.astype("float64")


def normalize_titles(titles: pd.Series) -> pd.Series:
    """Titles as their source shows them (`cft_core.titles.normalize_title`: NFC, control and
    invisible format characters removed, whitespace collapsed, stripped). Nulls stay null."""
    from cft_core.titles import normalize_title

    return titles.astype("string").map(normalize_title, na_action="ignore").astype("string")


def as_ids(values: pd.Series, path: Path | None = None, column: str = "id") -> pd.Series:
    """Ids as strings, keeping nulls (validation reports them). Ids that are the same number
    spelled differently ("1" and "1.0", "007" and "7") are refused: merging or splitting them
    would be a guess."""
    ids = values.astype("string").str.strip()
    distinct = pd.Series(ids.dropna().unique())
    number = pd.to_numeric(distinct, errors="coerce")
    shared = number.notna() & number.duplicated(keep=False)  # a number that two distinct ids spell
    if shared.any():
        clashes = list(distinct[shared].groupby(number[shared].to_numpy()).agg(list))
        where = f"{path}: column {column!r}" if path else f"column {column!r}"
        raise DataError(f"{where}: {len(clashes)} id(s) spelled two ways, e.g. {clashes[:3]}; they would "
                        "be taken as different users/items: make each id one spelling")
    return ids


def refuse_incomplete_rows(df: pd.DataFrame, columns: list[str], path: Path, first_line: int | None) -> None:
    """A row without a user, item or timestamp is named here, with its part, line and values (the
    validation, after the parts are joined, could only count it). Most often it is the last line
    of a part still being copied into the folder, which the message then says."""
    incomplete = df[columns].isna().any(axis=1)
    if not incomplete.any():
        return
    rows = df.index[incomplete]
    example = {c: (None if pd.isna(v) else str(v)) for c, v in df.loc[rows[0], columns].items()}
    last = " (the file's last row: is it still being written? write a file under another name, in a folder of " \
        "parts one starting with '.', and rename it when complete)" if list(rows) == [df.index[-1]] else ""
    raise DataError(f"{path}: {len(rows)} row(s) without a value in {columns}, e.g. {where_rows(rows, first_line)}; "
                    f"the first: {example}{last}")
