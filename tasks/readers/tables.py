"""One file of a generic source as a table (`SourceTable`): Parquet, CSV/TSV (gzipped or not),
JSON lines (nested objects flattened) or an Excel workbook's sheet, only the columns asked for."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from schemas.errors import DataError
from tasks.readers.files import (
    NotDecodable,
    arrow_input,
    check_not_pickle,
    check_readable,
    json_objects,
    refuse_duplicate_columns,
    string_table_arrow,
    string_table_by_pandas,
)

log = logging.getLogger(__name__)


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
    """One file of a generic source as read (`read_source_table`): the Arrow table where pyarrow's
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
        the nested ones (`require_columns`, `refuse_nested`)."""
        df = self.frame if self.arrow is None else self.arrow.to_pandas()
        df.attrs["nested"], df.attrs["columns"] = self.nested, self.names
        return df


def read_table(path: Path, encoding: str, delimiter: str | None = None, columns=None,
                sheet: str | None = None) -> pd.DataFrame:
    """A generic source's file as a DataFrame (`read_source_table`, which says how each kind is read)."""
    return read_source_table(path, encoding, delimiter, columns, sheet).to_pandas()


def read_source_table(path: Path, encoding: str, delimiter: str | None = None, columns=None,
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
        check_not_pickle(path)
        try:
            file = pq.ParquetFile(path)
            schema = file.schema_arrow  # (the footer only)
            refuse_duplicate_columns(schema.names, path)
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
        table = string_table_arrow(path, sep, encoding)
        frame = None if table is not None else string_table_by_pandas(path, sep, encoding)
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

    check_readable(path)
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
        refuse_duplicate_columns(names, path)
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

    pyarrow's JSON reader infers each field's type in C++. In a file of MAPPED_ONLY_FROM_BYTES or
    more whose first block types `columns`, only those are parsed (`_json_fields_typed_by_first_block`);
    else every field is, and the others are dropped after. A file it refuses (a field that is a number on
    one line and text on another, a line that is no JSON) is read again line by line, every value
    as text, as a CSV's are, or with the error naming the line."""
    import pyarrow as pa
    import pyarrow.json as pj

    def parsed(options=None):
        with arrow_input(path) as stream:
            table = pj.read_json(stream, parse_options=options)
        while any(pa.types.is_struct(t) for t in table.schema.types):
            table = table.flatten()  # (one level a pass: "a.b" then "a.b.c")
        return table

    check_readable(path)
    try:
        table = None
        if (first := _json_fields_typed_by_first_block(path, columns)) is not None:
            mapped, names = first
            try:
                table = parsed(pj.ParseOptions(explicit_schema=mapped, unexpected_field_behavior="ignore"))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                table = None  # (a later line the first block's types do not fit: the whole file, as before)
        if table is None:
            table = parsed()
            names = table.schema.names
        table = table.select(_kept(names, columns))  # (an event's other fields never become Python objects)
        table.validate(full=True)  # (bytes that are no UTF-8 pass the reader inside strings)
        read = SourceTable(path, table, None, names, [f.name for f in table.schema if pa.types.is_nested(f.type)])
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, OSError, EOFError):
        seen: dict[str, None] = {}  # every name, in the order met
        rows = []
        for _, row in json_objects(path):
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


# A smaller JSON-lines file is parsed whole: its every field costs little memory, and reading its
# first block as well cost more than it saved. A delivery stream's 5,000 parts of 20 events took
# 1.36-1.76x the time with the first block read too (3 interleaved pairs, 2026-12-07); 8 MB of
# gzipped events take about 70 MB to parse whole (191 MB of them took 1,630 MB).
MAPPED_ONLY_FROM_BYTES = 8 << 20


def _json_fields_typed_by_first_block(path: Path, columns) -> tuple[Any, list[str]] | None:
    """(the schema to parse `columns` by, every column name of the file's first block), or None
    where columns is None, the file is smaller than MAPPED_ONLY_FROM_BYTES or its first block
    (pyarrow's first 1 MB) cannot type them: the whole file is then parsed, every field. Columns
    inside nested objects are named by their dotted path, as `_json_lines_table` flattens them.

    A column is parsed as the first block types it. One it lacks (an optional one, `rating` in a
    log without ratings; not one inside an object: then None) is parsed as nulls, so that a line
    that has a value for it fails the read and the whole file is parsed instead. Types and columns
    are then what parsing the whole file gives: a later line that does not fit the first block's
    types (a float where it had integers, text where it had numbers) fails the read alike. One
    difference: a column the first block lacks and later lines hold only as null is read as
    absent, where parsing every field gives a column of nulls.

    Parsing only these, the generic reader read an event export's one 1,000,000-line file of 30
    fields (191 MB gzipped) in 5.3 s at 410 MB, where parsing every field took 9.6 s and 1,630 MB
    (benchmarks/readers.py, `--source lake-json-file`)."""
    import pyarrow as pa
    import pyarrow.json as pj

    if columns is None or path.stat().st_size < MAPPED_ONLY_FROM_BYTES:
        return None
    try:
        with arrow_input(path) as stream:
            first = pj.open_json(stream).schema
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, OSError, EOFError):
        return None  # (the whole-file read says what is wrong)
    wanted, found, names = set(columns), set(), []

    def kept(field, prefix: str = ""):
        name = f"{prefix}{field.name}"
        if pa.types.is_struct(field.type):  # (its fields are columns "name.field", as flattened)
            inner = [f for f in (kept(child, f"{name}.") for child in field.type) if f is not None]
            return pa.field(field.name, pa.struct(inner)) if inner else None
        names.append(name)
        if name not in wanted:
            return None
        found.add(name)
        return field  # (a null-typed one too: a later value fails the read)

    fields = [f for f in map(kept, first) if f is not None]
    lacking = sorted(wanted - found)
    if any("." in name or name in first.names for name in lacking):  # (inside an object; or an object itself)
        return None
    return pa.schema(fields + [pa.field(name, pa.null()) for name in lacking]), names


def _flat_text(row: dict, prefix: str = "") -> dict:
    """One JSON object as {dotted name: value as text} (None stays None; a list stays a list, for
    `refuse_nested`): what `_json_lines_table` reads from a file pyarrow refuses."""
    flat = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_text(value, f"{name}."))
        else:
            flat[name] = value if value is None or isinstance(value, (str, list)) else json.dumps(value)
    return flat


def refuse_nested(df: pd.DataFrame, columns, path: Path) -> None:
    """DataError naming the columns of `columns` that a Parquet or JSON-lines file holds as lists,
    records or maps (`read_table`'s `attrs["nested"]`), where one id, time, rating or title per row
    belongs."""
    if nested := [c for c in df.attrs.get("nested", []) if c in set(columns)]:
        example = df[nested[0]].iloc[0]
        example = example.tolist() if hasattr(example, "tolist") else example
        raise DataError(f"{path}: column(s) {nested} hold lists or records (e.g. {example!r}), where one value "
                        "per row belongs")
