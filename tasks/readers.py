"""Source readers: every supported layout -> (interactions, items) DataFrames in our columns.

interactions: user_id (str), item_id (str), timestamp (int64 unix s), rating (float, may be null)
items:        item_id (str), title (str)

Every reader opens files through `open_text`, which refuses pickles, names the file and byte
offset of non-UTF-8 text, and turns a truncated gzip into a clear error. List columns of D3
CSVs are parsed with `ast.literal_eval` (literals only), never `eval`.
"""

from __future__ import annotations

import ast
import codecs
import gzip
import html
import importlib.resources
import io
import json
import logging
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd

from schemas.config import DataConfig
from schemas.errors import DataError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".npy"}


def _check_not_pickle(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(2)
    # Pickle protocols 2..5 start with 0x80 then the protocol number.
    if path.suffix.lower() in PICKLE_SUFFIXES or (len(head) == 2 and head[0] == 0x80 and head[1] <= 5):
        raise DataError(
            f"{path}: looks like a pickle/binary object file; refusing to load it (pickles can "
            "run arbitrary code). Provide CSV, Parquet or JSON lines."
        )


def _check_readable(path: Path) -> None:
    """DataError unless `path` is a file that is no pickle."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    _check_not_pickle(path)


def read_bytes(path: Path) -> bytes:
    """Whole file, gunzipped when it ends in .gz; errors name the file."""
    _check_readable(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, OSError) as e:
            raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    return raw


class NotDecodable(DataError):
    """A text file that is not in the encoding it was read in."""


def open_text(path: Path, encoding: str = "utf-8") -> str:
    raw = read_bytes(path)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise NotDecodable(
            f"{path}: not valid {encoding} text at byte {e.start} (line {line}): {raw[e.start:e.start + 8]!r}"
        ) from None


def read_csv(path: Path, sep: str = ",", encoding: str = "utf-8", **kw) -> pd.DataFrame:
    text = open_text(path, encoding)
    try:
        if kw.get("header", "infer") == "infer":  # pandas would rename a repeated name to "name.1"
            header = pd.read_csv(io.StringIO(text), sep=sep, header=None, nrows=1, dtype=str).iloc[0].tolist()
            _refuse_duplicate_columns(header, path)
        df = pd.read_csv(io.StringIO(text), sep=sep, **kw)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: cannot parse as delimited text ({e})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: is empty") from None
    if df.empty:
        raise DataError(f"{path}: has a header but no rows")
    return df


def read_string_table(path: Path, sep: str = ",", encoding: str = "utf-8") -> pd.DataFrame:
    """A delimited text file with a header, every column as strings, only empty fields null: what
    `read_csv(path, sep, encoding, dtype=str, keep_default_na=False, na_values=[""])` reads, by pyarrow's CSV
    reader (25M rows: 6x faster in two thirds of the memory, benchmarks/readers.py). A file it refuses or
    would name differently goes to pandas, whose rules and errors then hold: a short row (pandas
    pads it), an empty header name ("Unnamed: 1"), invalid UTF-8, a truncated gzip, no rows."""
    table = _string_table_arrow(path, sep, encoding)
    return _string_table_by_pandas(path, sep, encoding) if table is None else table.to_pandas()


def _string_table_by_pandas(path: Path, sep: str = ",", encoding: str = "utf-8") -> pd.DataFrame:
    """`read_string_table` by pandas' CSV reader, for a file pyarrow's refuses or would read
    otherwise: pandas' rules and its errors naming the line hold."""
    return read_csv(path, sep=sep, encoding=encoding, dtype=str, keep_default_na=False, na_values=[""])


def _string_table_arrow(path: Path, sep: str = ",", encoding: str = "utf-8"):
    """`read_string_table`'s columns as an Arrow table (large strings), or None where pandas must
    read the file (`read_string_table` says which files)."""
    import csv

    import pyarrow as pa
    import pyarrow.csv as pcsv

    _check_readable(path)
    utf8 = codecs.lookup(encoding).name == "utf-8"
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8-sig" if utf8 else encoding,
                                                          newline="") as f:
            names = next(csv.reader(f, delimiter=sep), [])
    except (UnicodeDecodeError, OSError, EOFError, csv.Error):
        return None
    _refuse_duplicate_columns(names, path)
    if not names or not all(names):
        return None
    try:
        table = pcsv.read_csv(
            pa.input_stream(str(path), compression="gzip" if path.suffix == ".gz" else None),
            read_options=pcsv.ReadOptions(encoding="utf8" if utf8 else encoding),  # (others: transcoded by Python)
            parse_options=pcsv.ParseOptions(delimiter=sep, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.large_string()),
                                                strings_can_be_null=True, null_values=[""]),
        )
    except (pa.ArrowInvalid, OSError):
        return None
    if table.column_names != names or any(t != pa.large_string() for t in table.schema.types) or not table.num_rows:
        return None
    return table


def _refuse_duplicate_columns(names: list, path: Path) -> None:
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if repeated:
        raise DataError(f"{path}: column name(s) {repeated} appear more than once in the header "
                        f"{names}; which one is meant is ambiguous: rename them")


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
_DATE_LIKE = r"^\s*\d{1,4}[-./]\d{1,2}[-./]\d{1,4}"


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
        if unit == "iso" and values[bad].astype("string").str.match(_DATE_LIKE).any():
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
    """Titles as people see them (`cft_core.titles.normalize_title`: NFKC, control and zero-width
    characters removed, whitespace collapsed, stripped). Nulls stay null."""
    from cft_core.titles import normalize_title

    return titles.astype("string").map(normalize_title, na_action="ignore").astype("string")


def _ids(values: pd.Series, path: Path | None = None, column: str = "id") -> pd.Series:
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


# ------------------------------------------------------------------------------ MovieLens


def recbole_package_folder() -> Path:
    """ML-100K atomic files shipped in the recbole==1.2.1 wheel."""
    try:
        folder = importlib.resources.files("recbole") / "dataset_example" / "ml-100k"
    except ModuleNotFoundError:
        raise DataError(
            "the default dataset comes from the PyPI wheel recbole==1.2.1: run "
            "`pip install --no-deps recbole==1.2.1` (infra/setup.sh does this), or point "
            "data.source at a local MovieLens folder"
        ) from None
    return Path(str(folder))


def _strip_type(columns) -> list[str]:
    return [c.split(":")[0] for c in columns]


def recbole_files(folder: Path) -> tuple[Path, Path]:
    """The (.inter, .item) atomic files `read_recbole` reads of a folder: the first of each by name."""
    inter_files, item_files = sorted(folder.glob("*.inter")), sorted(folder.glob("*.item"))
    if not inter_files or not item_files:
        raise DataError(f"{folder}: expected RecBole atomic files <name>.inter and <name>.item")
    return inter_files[0], item_files[0]


def read_recbole(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RecBole atomic files: <name>.inter and <name>.item, header `name:type`, tab-separated."""
    inter_path, item_path = recbole_files(folder)
    inter = read_string_table(inter_path, sep="\t")
    inter.columns = _strip_type(inter.columns)
    require_columns(inter, ["user_id", "item_id", "timestamp"], inter_path)
    items = read_string_table(item_path, sep="\t")
    items.columns = _strip_type(items.columns)
    title_col = next((c for c in ("movie_title", "title", "item_title") if c in items.columns), None)
    if title_col is None:
        raise DataError(f"{item_path}: no title column (movie_title, title or item_title); found {list(items.columns)}")
    title = items[title_col].str.strip()
    if "release_year" in items.columns:  # "Toy Story" + 1995 -> "Toy Story (1995)", as in GroupLens
        year = items["release_year"].fillna("").str.strip()
        title = title.where(year == "", title + " (" + year + ")")
    interactions = pd.DataFrame(
        {
            "user_id": _ids(inter["user_id"]),
            "item_id": _ids(inter["item_id"]),
            "timestamp": to_int_timestamps(inter["timestamp"], inter_path, "timestamp", "s", first_line=2)[0],
            "rating": to_float(inter["rating"], inter_path, "rating", first_line=2) if "rating" in inter else None,
        }
    )
    return interactions, pd.DataFrame({"item_id": _ids(items["item_id"]), "title": title})


# The GroupLens MovieLens layouts, told apart by the files a download unpacks to. Each ratings file
# holds user, item, rating, time; the titles carry the year, "Toy Story (1995)".
#   ML-100K                          u.data (tab), u.item ('|'), latin-1
#   ML-1M, ML-10M                    ratings.dat, movies.dat ('::'); ML-1M's titles are latin-1
#   ML-20M/25M/32M, ml-latest(-small) ratings.csv, movies.csv (headers; UTF-8, quoted titles)
RATINGS_CSV_HEADER = ["userId", "movieId", "rating", "timestamp"]
MOVIES_CSV_COLUMNS = ["movieId", "title"]


GROUPLENS_LAYOUTS = (("u.data", "u.item"), ("ratings.dat", "movies.dat"), ("ratings.csv", "movies.csv"))


def grouplens_files(folder: Path) -> tuple[Path, Path]:
    """The (ratings, movies) files `read_grouplens` reads of a folder, told by the ratings file's
    name; nothing else of a download (ML-25M's 415 MB genome scores, tags, links, READMEs)."""
    for ratings, movies in GROUPLENS_LAYOUTS:
        if (folder / ratings).is_file():
            return folder / ratings, folder / movies
    raise DataError(f"{folder}: expected GroupLens u.data/u.item (100K), ratings.dat/movies.dat (1M, 10M) "
                    "or ratings.csv/movies.csv (20M, 25M, 32M, ml-latest)")


def read_grouplens(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A GroupLens MovieLens folder (the layouts above) -> (interactions, items)."""
    inter_path, item_path = grouplens_files(folder)
    if inter_path.name == "u.data":
        inter = _read_ratings(inter_path, "\t")
        items = read_csv(item_path, sep="|", header=None, dtype=str, encoding="latin-1")
    elif inter_path.name == "ratings.dat":
        inter = _read_ratings(inter_path, "::")
        text = _utf8_or_latin1(item_path)
        items = pd.DataFrame([line.split("::") for line in text.splitlines() if line])
    else:
        inter = _read_ratings(inter_path, ",", header=RATINGS_CSV_HEADER)
        items = read_string_table(item_path)
        require_columns(items, MOVIES_CSV_COLUMNS, item_path)
        items = items[MOVIES_CSV_COLUMNS].set_axis([0, 1], axis=1)
    if items.shape[1] < 2:
        raise DataError(f"{item_path}: expected at least 2 fields (item id, title), got {items.shape[1]}")
    first_line = 2 if inter_path.name == "ratings.csv" else 1  # (u.data and ratings.dat have no header)
    interactions = pd.DataFrame(
        {
            "user_id": _ids(inter[0]),
            "item_id": _ids(inter[1]),
            "timestamp": to_int_timestamps(inter[3], inter_path, "timestamp", "s", first_line)[0],
            "rating": to_float(inter[2], inter_path, "rating", first_line),
        }
    )
    return interactions, pd.DataFrame({"item_id": _ids(items[0]), "title": items[1].str.strip()})


def _utf8_or_latin1(path: Path) -> str:
    """ML-1M's movies.dat is latin-1; ML-10M's is UTF-8. Text that decodes as UTF-8 is taken as
    UTF-8 (latin-1 text with accents almost never does), else as latin-1."""
    raw = read_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_ratings(path: Path, sep: str, header: list[str] | None = None) -> pd.DataFrame:
    """The four fields (user, item, rating, time) of a GroupLens ratings file as strings, columns
    0..3, by pyarrow's CSV reader: 25M ratings in 7.5 s and 3.0 GB, where pandas' reading and
    parsing took 6x the time and 1.7x the memory (benchmarks/results/readers-movielens.md). The
    fields are numbers, so there is no quoting, and ML-1M/10M's "::" is read as ':' with an empty
    field between every two. A file it refuses is read again line by line, to name the line at fault."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    _check_readable(path)
    if header is not None:
        with open(path, encoding="utf-8", errors="replace") as f:
            found = f.readline().rstrip("\r\n").lstrip("\ufeff").split(sep)
        if found != header:
            raise DataError(f"{path}: expected the header {','.join(header)}, found {','.join(found)!r}; "
                            "for other columns use data.source.format=generic with data.source.columns")
    width = 7 if sep == "::" else 4
    names = [str(i) for i in range(width)]
    try:
        table = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=int(header is not None)),
            parse_options=pcsv.ParseOptions(delimiter=sep[0], quote_char=False),
            convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.large_string()),
                                                strings_can_be_null=True),  # "" -> null, as pandas reads it
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        _raise_first_bad_line(path, sep, header)
        raise DataError(f"{path}: cannot read as {sep!r}-separated ratings ({e})") from None
    if sep == "::":  # ':' splits "1::2" into "1", "", "2": the odd columns must be empty (null)
        if any(table.column(i).null_count != table.num_rows for i in (1, 3, 5)):
            _raise_first_bad_line(path, sep, header)
        table = table.select([0, 2, 4, 6])
    if table.num_rows == 0:
        raise DataError(f"{path}: has no ratings")
    return table.rename_columns(["0", "1", "2", "3"]).to_pandas().set_axis([0, 1, 2, 3], axis=1)


def _raise_first_bad_line(path: Path, sep: str, header: list[str] | None) -> None:
    """DataError naming the first line of a ratings file that is not four `sep`-separated fields."""
    for number, line in enumerate(open_text(path).splitlines(), start=1):
        if header is not None and number == 1 or not line.strip():
            continue
        if len(fields := line.split(sep)) != 4 or not all(f.strip() for f in fields):
            raise DataError(f"{path}: line {number} is not four {sep!r}-separated fields (user, item, "
                            f"rating, timestamp): {line[:80]!r}")


# ------------------------------------------------------------------------------ Amazon

_HTML_FRAGMENT = re.compile(r"<[a-zA-Z/][^>]*>|&[a-z]+;|\bvar\s|function\s*\(|getTime\(")


def clean_amazon_title(title: object) -> str | None:
    """D3's title cleaning: unescape entities, strip spaces and quotes; None when the title is
    empty, a single character, longer than 20 words, or an HTML/JS fragment."""
    if not isinstance(title, str):
        return None
    t = html.unescape(html.unescape(title)).strip().strip('"').strip()
    if len(t) <= 1 or len(t.split()) > 20 or _HTML_FRAGMENT.search(t):
        return None
    return t


def _json_lines(path: Path, fields: dict[str, str]) -> pd.DataFrame:
    """`fields` (name -> Arrow type: "string", "float64", "int64") of a JSON-lines file, gzipped
    or not, as columns; a field no line has is no column (so `require_columns` names it).

    pyarrow's JSON reader parses only these fields, in C++ and threads: 1M Amazon reviews (662 MB
    of JSON) in 3.7 s and 283 MB, where `json.loads` of every field of the whole text took 22.6 s
    and 4.3 GB, too much for a large category (benchmarks/readers.py, 2026-12-06). A file it refuses (a line that is no
    JSON, a field whose type varies, bytes that are no UTF-8, a truncated gzip) is read again
    line by line (`_json_lines_by_line`), which names the line at fault or, where the file is
    fine and only the types vary, reads it as before."""
    import pyarrow as pa
    import pyarrow.json as pj

    _check_readable(path)
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in fields.items()])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        with pa.input_stream(str(path), compression="gzip" if path.suffix == ".gz" else None) as stream:
            table = pj.read_json(stream, parse_options=options)
        table.validate(full=True)  # the reader passes bytes that are no UTF-8 inside strings on
        frame = table.to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, OSError, EOFError):
        frame = _json_lines_by_line(path, list(fields))
    if frame.empty:
        raise DataError(f"{path}: file holds no JSON lines")
    return frame[[name for name in frame.columns if frame[name].notna().any()]]


def _json_lines_by_line(path: Path, fields: list[str]) -> pd.DataFrame:
    """`_json_lines` in Python, one line at a time (only `fields` kept); DataError naming the line
    that is no JSON object or no UTF-8, or the gzip file that is corrupt (`_json_objects`)."""
    columns: dict[str, list] = {name: [] for name in fields}
    for n, row in _json_objects(path):
        for name, values in columns.items():
            value = row.get(name)
            if isinstance(value, (list, dict)):  # (it would be read as the text "['A1']")
                raise DataError(f"{path}: line {n}: field {name!r} holds a JSON {type(value).__name__} "
                                f"({json.dumps(value)[:60]}), where one value belongs")
            values.append(value)
    return pd.DataFrame(columns)


ONE_DOCUMENT = (" (the file seems to be one JSON document, not JSON lines, which hold one object a line: e.g. "
                "`jq -c '.[]' in.json > out.jsonl`; in a folder of parts, a file that is none is left out by a name "
                "starting with '_')")


def _json_objects(path: Path):
    """(line number, object) of a JSON-lines file (gzipped or not), one a line, blank lines skipped; DataError
    naming the line that is no JSON object or no UTF-8 (a file that is one JSON array said as
    such), or the gzip file that is corrupt."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            for n, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: line {n} is not valid utf-8 text at byte {e.start} of the line: "
                                    f"{raw[e.start:e.start + 8]!r}") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    one_document = n == 1 and line.strip() in ("[", "{") or line.lstrip().startswith("[{")
                    raise DataError(f"{path}: line {n} is not valid JSON ({e.msg})"
                                    f"{ONE_DOCUMENT if one_document else ''}") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {n} is a JSON {type(row).__name__}, not an object"
                                    f"{ONE_DOCUMENT if n == 1 and isinstance(row, list) else ''}")
                yield n, row
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None


# The two Amazon Reviews releases a category's files come in, told apart by the reviews' fields:
# (user, item, unix time, rating) fields, the time's unit, and the field the meta file keys items by.
# 2023 reviews name a product variant's `asin` and its product's `parent_asin`; its meta file has
# only `parent_asin`, the item its benchmark splits recommend, so that is the item here too.
AMAZON_RELEASES = {
    "2018": {"fields": ("reviewerID", "asin", "unixReviewTime", "overall"), "unit": "s", "meta_key": "asin"},
    "2023": {"fields": ("user_id", "parent_asin", "timestamp", "rating"), "unit": "ms", "meta_key": "parent_asin"},
}


def _amazon_release(reviews: pd.DataFrame, path: Path) -> str:
    """Which release `reviews` (the fields `_json_lines` found) is; DataError naming both when neither."""
    for release, spec in AMAZON_RELEASES.items():
        if all(name in reviews for name in spec["fields"][:3]):
            return release
    wanted = "; ".join(f"{r}: {', '.join(s['fields'][:3])}" for r, s in AMAZON_RELEASES.items())
    raise DataError(f"{path}: not an Amazon Reviews file: its lines lack the user, item and time fields of either "
                    f"release ({wanted}); found {sorted(reviews.columns)}")


def _amazon_reviews(path: Path) -> tuple[pd.DataFrame, int]:
    """(the reviews' user, item, time and rating fields of either release, the line of the first
    row): JSON lines, or a CSV such as the 2023 release's benchmark files (`rating_only/<Category>.csv`:
    user_id,parent_asin,rating,timestamp), gzipped or not."""
    if path.name.removesuffix(".gz").endswith(".csv"):
        return read_string_table(path), 2  # (line 1: the header)
    fields = {name: kind for spec in AMAZON_RELEASES.values()
              for name, kind in zip(spec["fields"], ("string", "string", "int64", "float64"), strict=True)}
    return _json_lines(path, fields), 1


def read_amazon_raw(reviews_path: Path, meta_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An Amazon Reviews category: its reviews and its meta file, JSON lines, gzipped or not, of
    the 2018 release (reviewerID, asin, overall, unixReviewTime; meta keyed by asin) or the 2023
    one (user_id, parent_asin, rating, timestamp in ms; meta keyed by parent_asin; its benchmark
    CSVs work too), told apart by the reviews' fields. Items whose cleaned title is dropped are
    dropped, and so are their reviews (D3 step 2), and the reviews of items the meta file lacks;
    both counted in a warning and in `interactions.attrs["dropped"]` (the ingest manifest)."""
    reviews, first_line = _amazon_reviews(reviews_path)
    release = _amazon_release(reviews, reviews_path)
    user, item, time, rating = AMAZON_RELEASES[release]["fields"]
    _refuse_incomplete_rows(reviews, [user, item, time], reviews_path, first_line)
    key = AMAZON_RELEASES[release]["meta_key"]
    meta = _json_lines(meta_path, {key: "string", "title": "string"})
    if key not in meta:
        raise DataError(f"{meta_path}: its lines have no {key!r} field, which the Amazon Reviews {release} meta "
                        f"file keys its items by (the reviews {reviews_path.name} are of that release)")
    require_columns(meta, ["title"], meta_path)  # (its key: named just above, with the release)
    titled = meta.assign(title=meta["title"].map(clean_amazon_title)).dropna(subset=["title"])
    untitled = set(meta[key].dropna()) - set(titled[key])
    meta = titled.drop_duplicates(key)
    of_untitled = reviews[item].isin(untitled)
    without_meta = ~of_untitled & ~reviews[item].isin(meta[key])
    dropped = {"amazon_title_cleaning": {"items": len(untitled), "interactions": int(of_untitled.sum())},
               "amazon_without_meta": {"interactions": int(without_meta.sum())}}
    if of_untitled.any() or without_meta.any():
        log.warning("%s: dropping %d of %d reviews: %d of %d items' titles fail D3's cleaning (empty, one character, "
                    "over 20 words or HTML; %d reviews), and %d reviews are of items %s lacks",
                    reviews_path, int((of_untitled | without_meta).sum()), len(reviews), len(untitled),
                    meta[key].nunique() + len(untitled), int(of_untitled.sum()), int(without_meta.sum()), meta_path.name)
    reviews = reviews[~of_untitled & ~without_meta]
    timestamps, unit = to_int_timestamps(reviews[time], reviews_path, time, AMAZON_RELEASES[release]["unit"], first_line)
    interactions = pd.DataFrame(
        {
            "user_id": _ids(reviews[user], reviews_path, user),
            "item_id": _ids(reviews[item], reviews_path, item),
            "timestamp": timestamps,
            "rating": to_float(reviews[rating], reviews_path, rating, first_line) if rating in reviews else None,
        }
    ).reset_index(drop=True)
    interactions.attrs["timestamp"] = {"column": time, "unit": unit, "release": release,
                                       "examples": [str(v) for v in reviews[time].head(3)]}
    interactions.attrs["dropped"] = {k: v for k, v in dropped.items() if v["interactions"] or v.get("items")}
    return interactions, pd.DataFrame({"item_id": _ids(meta[key], meta_path, key), "title": meta["title"]})


# ------------------------------------------------------------------------------ D3 / BIGRec CSV

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


# ------------------------------------------------------------------------------ generic


JSON_SUFFIXES = {".jsonl", ".ndjson", ".json"}  # JSON lines: one object a line (Spark's df.write.json)
TEXT_SUFFIXES = {".csv", ".tsv", ".tab", *JSON_SUFFIXES}  # also read gzipped: "part-00000.csv.gz"
WORKBOOK_SUFFIXES = {".xlsx", ".xlsm"}  # Excel 2007 and later (Office Open XML)
TABLE_SUFFIXES = {".parquet", *TEXT_SUFFIXES, *WORKBOOK_SUFFIXES}


def table_suffix(path: Path) -> str | None:
    """The kind of table a file holds by its name: ".parquet", ".csv", ".tsv", ".tab", ".jsonl",
    ".ndjson", ".json" (a text one also when gzipped, `events.tsv.gz` -> ".tsv"), ".xlsx" or
    ".xlsm" (also in capitals, as Windows may name them); None for any other file."""
    if path.suffix == ".gz":
        inner = Path(path.stem).suffix
        return inner if inner in TEXT_SUFFIXES else None
    if path.suffix.lower() in WORKBOOK_SUFFIXES:
        return path.suffix.lower()
    return path.suffix if path.suffix in TABLE_SUFFIXES else None


def _kept(names, columns) -> list[str]:
    """Of a file's column `names`, those a reader keeps: `columns` (None: all), in the file's order."""
    return [name for name in names if columns is None or name in columns]


@dataclass
class SourceTable:
    """One file of a generic source as read (`_read_source_table`): the Arrow table where pyarrow's
    readers read it (its kept columns), else a pandas frame: an Excel workbook's, or what a
    fallback read (pandas' CSV reader, JSON lines line by line)."""

    path: Path
    arrow: Any  # pyarrow.Table | None
    frame: pd.DataFrame | None
    names: list[str]  # every column the file has, for an error that names them
    nested: list[str]  # the kept columns that hold lists, records or maps

    def __len__(self) -> int:
        """Rows read."""
        return len(self.frame if self.arrow is None else self.arrow)

    def to_pandas(self) -> pd.DataFrame:
        """The columns as a DataFrame; `attrs["columns"]` has all the file's names, `attrs["nested"]`
        the nested ones (`require_columns`, `_refuse_nested`)."""
        df = self.frame if self.arrow is None else self.arrow.to_pandas()
        df.attrs["nested"], df.attrs["columns"] = self.nested, self.names
        return df


def _read_table(path: Path, encoding: str, delimiter: str | None = None, columns=None,
                sheet: str | None = None) -> pd.DataFrame:
    """A generic source's file as a DataFrame (`_read_source_table`, which says how each kind is read)."""
    return _read_source_table(path, encoding, delimiter, columns, sheet).to_pandas()


def _read_source_table(path: Path, encoding: str, delimiter: str | None = None, columns=None,
                       sheet: str | None = None) -> SourceTable:
    """A generic source's file: Parquet, JSON lines (`_json_lines_table`), or CSV/TSV (gzipped or not)
    separated by `delimiter` (None: by the suffix, "," for .csv, a tab for .tsv and .tab). A text
    file whose header reads as one column holding another separator (a semicolon: Excel's CSV in
    most European locales) is named with the setting that reads it.

    columns: the names kept (None: all; others are left out where the format allows: a Parquet
    file's other columns are never read, a JSON-lines or CSV file's never leave Arrow, as a data
    lake's event table may hold dozens). sheet: a workbook's sheet by name (None: its first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if table_suffix(path) in JSON_SUFFIXES:
        return _json_lines_table(path, columns)
    if table_suffix(path) in WORKBOOK_SUFFIXES:
        return _workbook_table(path, columns, sheet)
    if path.suffix.lower() == ".xls":
        raise DataError(f"{path}: an Excel 97-2003 workbook (.xls), which is not read: save it as .xlsx or as CSV")
    if path.suffix == ".parquet":
        _check_not_pickle(path)
        try:
            file = pq.ParquetFile(path)
            schema = file.schema_arrow  # (the footer only)
            _refuse_duplicate_columns(schema.names, path)
            table = file.read(columns=_kept(schema.names, columns))
        except DataError:
            raise
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        if not table.num_rows:
            raise DataError(f"{path}: has no rows")
        # Columns of lists, records or maps: fine where unread, an error where a value belongs (`read_generic`).
        return SourceTable(path, table, None, schema.names, [f.name for f in table.schema if pa.types.is_nested(f.type)])
    sep = delimiter or ("\t" if table_suffix(path) in (".tsv", ".tab") else ",")
    try:
        table = _string_table_arrow(path, sep, encoding)
        frame = None if table is not None else _string_table_by_pandas(path, sep, encoding)
    except NotDecodable as e:
        raise DataError(f"{e}; save it as UTF-8, or set data.source.encoding to the one it was saved in "
                        "(cp1252 for most files Excel saved on Windows)") from None
    names = list(frame.columns if table is None else table.column_names)
    if len(names) == 1 and (other := next((c for c in ";\t|," if c != sep and c in str(names[0])), None)):
        raise DataError(f"{path}: its header reads as one column, {str(names[0])[:60]!r}: the file seems "
                        f"separated by {other!r}, not {sep!r}; set data.source.delimiter: {json.dumps(other)}")
    return SourceTable(path, None if table is None else table.select(_kept(names, columns)), frame, names, [])


def _workbook_table(path: Path, columns=None, sheet_name: str | None = None) -> SourceTable:
    """A sheet of an Excel workbook (.xlsx, .xlsm; `sheet_name`, None: the first), by openpyxl (XML parsed by defusedxml):
    its first row the header, every other row an interaction, each cell as Excel typed it (numbers,
    text, dates: naive, so on `data.source.timezone`'s clock; a formula's last computed value).
    Blank rows are skipped, and the frame's index keeps the sheet's row numbers, minus 2 (so that an
    error with first line 2 names the rows Excel shows). The other sheets are named in a warning
    when the first is read unasked (data.source.sheet and items_sheet pick one)."""
    import openpyxl

    _check_readable(path)
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # a zip, XML or openpyxl error: no workbook
        raise _not_a_workbook(path, e) from None
    try:  # (the sheet's XML is parsed as its rows are read)
        if sheet_name is not None and sheet_name not in book.sheetnames:
            raise DataError(f"{path}: has no sheet {sheet_name!r}; its sheets: {book.sheetnames}")
        sheet = book[sheet_name] if sheet_name is not None else book.worksheets[0]
        others = [] if sheet_name is not None else book.sheetnames[1:]
        rows = sheet.iter_rows(values_only=True)
        header = list(next(rows, None) or [])
        while header and header[-1] is None:  # (cells formatted past the table's last column)
            header.pop()
        names = [f"Unnamed: {i}" if v is None else str(v).strip() for i, v in enumerate(header)]
        _refuse_duplicate_columns(names, path)
        wanted = set(_kept(names, columns))
        kept = [i for i, name in enumerate(names) if name in wanted]
        records, index = [], []
        for number, row in enumerate(rows, start=2):  # (the header is row 1)
            values = [row[i] if i < len(row) else None for i in kept]
            if any(v is not None and v != "" for v in values):
                records.append(values)
                index.append(number - 2)
    except DataError:
        raise
    except Exception as e:  # XML the parser refuses (defusedxml: entities), a sheet cut short
        raise _not_a_workbook(path, e) from None
    finally:
        book.close()
    if not names:
        raise DataError(f"{path}: its sheet {sheet.title!r} is empty")
    if not records:
        raise DataError(f"{path}: its sheet {sheet.title!r} has a header but no rows")
    if others:
        log.warning("%s: read its first sheet, %r; %d other sheet(s) left out: %s (data.source.sheet or items_sheet "
                    "names the one to read)", path, sheet.title, len(others), others[:5])
    frame = pd.DataFrame.from_records(records, columns=[names[i] for i in kept], index=index).infer_objects()
    return SourceTable(path, None, frame, names, [])


def _not_a_workbook(path: Path, error: Exception) -> DataError:
    """The DataError for a workbook openpyxl cannot read, naming the first cause (openpyxl wraps an
    XML error in "Unable to read workbook ... invalid XML")."""
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    text = str(error).splitlines()[0] if str(error) else ""
    return DataError(f"{path}: not a readable Excel workbook ({type(error).__name__}{': ' + text if text else ''})")


def _json_lines_table(path: Path, columns=None) -> SourceTable:
    """A JSON-lines file (an event export: Spark's `df.write.json`, Firehose, Segment), gzipped or
    not: a column a field, nested objects flattened into dotted names (`{"context": {"sku": 5}}`
    -> column "context.sku", which `data.source.columns` can map), lists kept as lists (refused
    where a value belongs, `SourceTable.nested`). columns: the names kept (None: all).

    pyarrow's JSON reader infers each field's type in C++; a file it refuses (a field that is a
    number on one line and text on another, a line that is no JSON) is read again line by line,
    every value as text, as a CSV's are, or with the error naming the line."""
    import pyarrow as pa
    import pyarrow.json as pj

    _check_readable(path)
    try:
        with pa.input_stream(str(path), compression="gzip" if path.suffix == ".gz" else None) as stream:
            table = pj.read_json(stream)
        while any(pa.types.is_struct(t) for t in table.schema.types):
            table = table.flatten()  # (one level a pass: "a.b" then "a.b.c")
        names = table.schema.names
        table = table.select(_kept(names, columns))  # (an event's other fields never become Python objects)
        table.validate(full=True)  # (bytes that are no UTF-8 pass the reader inside strings)
        read = SourceTable(path, table, None, names, [f.name for f in table.schema if pa.types.is_nested(f.type)])
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, OSError, EOFError):
        seen: dict[str, None] = {}  # every name, in the order met
        rows = []
        for _, row in _json_objects(path):
            flat = _flat_text(row)
            seen.update(dict.fromkeys(flat))
            rows.append({k: flat[k] for k in _kept(flat, columns)})
        names = list(seen)
        nested = sorted({k for row in rows for k, v in row.items() if isinstance(v, list)})
        df = pd.DataFrame.from_records(rows, columns=_kept(names, columns))
        read = SourceTable(path, None, df.astype({c: "string" for c in df.columns if c not in nested}), names, nested)
    if not len(read):
        raise DataError(f"{path}: file holds no JSON lines")
    return read


def _flat_text(row: dict, prefix: str = "") -> dict:
    """One JSON object as {dotted name: value as text} (None stays None; a list stays a list, for
    `_refuse_nested`): what `_json_lines_table` reads from a file pyarrow refuses."""
    flat = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_text(value, f"{name}."))
        else:
            flat[name] = value if value is None or isinstance(value, (str, list)) else json.dumps(value)
    return flat


def _refuse_nested(df: pd.DataFrame, columns, path: Path) -> None:
    """DataError naming the columns of `columns` that a Parquet or JSON-lines file holds as lists,
    records or maps (`_read_table`'s `attrs["nested"]`), where one id, time, rating or title per row
    belongs."""
    if nested := [c for c in df.attrs.get("nested", []) if c in set(columns)]:
        example = df[nested[0]].iloc[0]
        example = example.tolist() if hasattr(example, "tolist") else example
        raise DataError(f"{path}: column(s) {nested} hold lists or records (e.g. {example!r}), where one value "
                        "per row belongs")


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


def interaction_parts(path: Path, items_path: Path | None = None) -> list[Path]:
    """The files `read_generic` reads as interactions: the file itself, or a folder's parts (new
    files are dropped into it), sorted by their path in it. As pandas and pyarrow read a dataset
    folder: its subfolders too (Spark's and pyarrow's `partitionBy` layout,
    `dt=2026-12-01/part-0.parquet`, see `partition_values`), but no file or folder whose name starts
    with "." or "_" (a part being written, ".part-0.csv.crc", Spark's `_temporary/` and `_SUCCESS`);
    table files only (.parquet, .csv, .tsv, .tab, JSON lines, the text ones also gzipped:
    `table_suffix`). A table format whose folder also keeps the files of removed rows (Delta Lake,
    Apache Iceberg, Apache Hudi) is refused: reading its files as parts would read rows deleted
    long ago. The items file (`items_path`) is no part where it lies in the
    folder too (`my-data/` with `orders-*.csv` and `products.csv`)."""
    if not path.is_dir():
        return [path]
    refuse_table_format(path, (f"{mark}/{f.name}" for mark in TABLE_FORMATS if (path / mark).is_dir()
                               for f in (path / mark).iterdir()))
    parts = []
    for folder, subfolders, files in os.walk(path):
        subfolders[:] = [d for d in subfolders if not hidden(d)]  # (pruned: not walked)
        parts += [Path(folder, f) for f in files if not hidden(f) and table_suffix(Path(f))
                  and (items_path is None or not Path(folder, f).samefile(items_path))]
    if not parts:
        raise DataError(f"{path}: no interaction parts ({', '.join(sorted(TABLE_SUFFIXES))} files, in it or in "
                        "subfolders)")
    return sorted(parts, key=lambda f: f.relative_to(path).parts)


# Table formats whose folder holds the files of old versions next to the current ones, by the
# folder of their metadata: a first folder -> what it is.
TABLE_FORMATS = {"_delta_log": "a Delta Lake table", ".hoodie": "an Apache Hudi table",
                 "metadata": "an Apache Iceberg table"}


def hidden(relative_path: str) -> bool:
    """Whether a file's path in a folder of parts names it as none: a file or folder whose name
    starts with "." or "_" (a part being written, Spark's `_temporary/`, `_SUCCESS`, `.crc` files),
    or with "~$" (the owner file Excel keeps beside a workbook it has open)."""
    return any(name.startswith((".", "_", "~$")) for name in relative_path.split("/"))


def refuse_table_format(folder: str | Path, files: Iterable[str]) -> None:
    """DataError when `files` (paths in `folder`, "_delta_log/000.json") show it is a table format's
    folder (TABLE_FORMATS; Iceberg's `metadata/` by its `*.metadata.json`, since a plain folder of
    parts may hold a `metadata/` of its own)."""
    for file in files:
        first, _, rest = file.partition("/")
        if first in TABLE_FORMATS and rest and (first != "metadata" or rest.endswith(".metadata.json")):
            raise DataError(f"{folder}: {TABLE_FORMATS[first]} ({first}/ in it): its folder also keeps the files of rows "
                            "it has since removed or rewritten, so its files are not read as parts; export the "
                            "table's current version as Parquet (e.g. spark.read.table(...).write.parquet(folder)) "
                            "and point data.source.path at that")


def part_name(file: Path, folder: Path | None) -> str:
    """How a source file is named (in the ingest key, the manifest's units): its path in the folder
    of parts it lies in (`dt=2026-12-01/part-0.parquet`: the same bytes in another partition folder
    are other rows; in a flat folder the same as its name), else its name."""
    return file.relative_to(folder).as_posix() if folder and file.is_relative_to(folder) else file.name


HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # how Spark and Hive name the folder of a null partition value


def partition_values(part: Path, root: Path) -> dict[str, str | None]:
    """The Hive-style partition values in the folder names between `root` and `part`:
    `root/dt=2026-12-01/country=de/part-0.parquet` -> {"dt": "2026-12-01", "country": "de"}.

    `df.write.partitionBy("dt")` (Spark) and `pyarrow.parquet.write_to_dataset(partition_cols=...)`
    move those columns out of the files into the folder names; they are read back as text columns,
    percent-escapes decoded (Spark writes "10:00" as "10%3A00"), HIVE_NULL as a missing value. A
    folder name without "=" holds no value (`2026/12/01/`)."""
    values = {}
    for name in part.parent.relative_to(root).parts:
        key, eq, value = name.partition("=")
        if eq and key:
            values[unquote(key)] = None if value == HIVE_NULL else unquote(value)
    return values


def _refuse_incomplete_rows(df: pd.DataFrame, columns: list[str], path: Path, first_line: int | None) -> None:
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
    _refuse_nested(df, col.values(), path)
    _refuse_incomplete_rows(df, [col["user_id"], col["item_id"], col["timestamp"]], path, first_line)
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
            dates = pc.sum(pc.match_substring_regex(values, _DATE_LIKE)).as_py() or 0
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
            table = _with_partition_columns(_read_source_table(part, cfg.source.encoding, cfg.source.delimiter,
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
    item_ids = _ids(rows["item_id"], inter_path, col["item_id"])
    item_col = {k: cfg.source.items_columns.get(k, col[k]) for k in ("item_id", "title")}  # (the items file's)
    if items_path is not None:
        items_df = _read_table(items_path, cfg.source.encoding, cfg.source.delimiter, set(item_col.values()),
                               cfg.source.items_sheet)
        require_columns(items_df, list(item_col.values()), items_path, *(
            (cfg.source.items_columns, "items_columns") if cfg.source.items_columns else (cfg.source.columns,)))
        _refuse_nested(items_df, list(item_col.values()), items_path)
    else:  # titles in the interactions file itself
        items_df = _newest_titles(item_ids, rows["title"], timestamps, inter_path).set_axis(
            list(item_col.values()), axis=1)
    interactions = pd.DataFrame(
        {
            "user_id": _ids(rows["user_id"], inter_path, col["user_id"]),
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
    return interactions, pd.DataFrame({"item_id": _ids(items_df[item_col["item_id"]], items_source, item_col["item_id"]),
                                       "title": title.str.strip()})
