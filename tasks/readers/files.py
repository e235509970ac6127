"""Opening a source file safely: pickles refused, gzip undone, text decoded with the byte and line
of a bad one named; delimited text as a table of strings (pyarrow's CSV reader, pandas' where it
refuses a file); JSON lines one object at a time with the line at fault named."""

from __future__ import annotations

import codecs
import gzip
import io
import json
import zlib
from pathlib import Path

import pandas as pd

from schemas.errors import DataError

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".npy"}


def arrow_input(path: Path):
    """The file as a pyarrow input stream, gzip undone for a `.gz` file (pyarrow's CSV and JSON
    readers read from it)."""
    import pyarrow as pa

    return pa.input_stream(str(path), compression="gzip" if path.suffix == ".gz" else None)


def check_not_pickle(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(2)
    # Pickle protocols 2..5 start with 0x80 then the protocol number.
    if path.suffix.lower() in PICKLE_SUFFIXES or (len(head) == 2 and head[0] == 0x80 and head[1] <= 5):
        raise DataError(
            f"{path}: looks like a pickle/binary object file; refusing to load it (pickles can "
            "run arbitrary code). Provide CSV, Parquet or JSON lines."
        )


def check_readable(path: Path) -> None:
    """DataError unless `path` is a file that is no pickle."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    check_not_pickle(path)


def read_bytes(path: Path) -> bytes:
    """Whole file, gunzipped when it ends in .gz; errors name the file."""
    check_readable(path)
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
            refuse_duplicate_columns(header, path)
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
    table = string_table_arrow(path, sep, encoding)
    return string_table_by_pandas(path, sep, encoding) if table is None else table.to_pandas()


def string_table_by_pandas(path: Path, sep: str = ",", encoding: str = "utf-8") -> pd.DataFrame:
    """`read_string_table` by pandas' CSV reader, for a file pyarrow's refuses or would read
    otherwise: pandas' rules and its errors naming the line hold."""
    return read_csv(path, sep=sep, encoding=encoding, dtype=str, keep_default_na=False, na_values=[""])


def string_table_arrow(path: Path, sep: str = ",", encoding: str = "utf-8"):
    """`read_string_table`'s columns as an Arrow table (large strings), or None where pandas must
    read the file (`read_string_table` says which files)."""
    import csv

    import pyarrow as pa
    import pyarrow.csv as pcsv

    check_readable(path)
    utf8 = codecs.lookup(encoding).name == "utf-8"
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8-sig" if utf8 else encoding,
                                                          newline="") as f:
            names = next(csv.reader(f, delimiter=sep), [])
    except (UnicodeDecodeError, OSError, EOFError, csv.Error):
        return None
    refuse_duplicate_columns(names, path)
    if not names or not all(names):
        return None
    try:
        table = pcsv.read_csv(
            arrow_input(path),
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


def refuse_duplicate_columns(names: list, path: Path) -> None:
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if repeated:
        raise DataError(f"{path}: column name(s) {repeated} appear more than once in the header "
                        f"{names}; which one is meant is ambiguous: rename them")


ONE_DOCUMENT = (" (the file seems to be one JSON document, not JSON lines, which hold one object a line: e.g. "
                "`jq -c '.[]' in.json > out.jsonl`; in a folder of parts, a file that is none is left out by a name "
                "starting with '_')")


def json_objects(path: Path):
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
