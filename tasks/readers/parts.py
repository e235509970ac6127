"""A folder of parts: which of its files are parts (data-lake conventions: hidden files, Spark's
markers, table formats refused), how a part is named, and the partition values in its folders."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

from schemas.errors import DataError
from tasks.readers.tables import TABLE_SUFFIXES, table_suffix


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
