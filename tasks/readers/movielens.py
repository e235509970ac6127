"""MovieLens: the ML-100K atomic files inside the recbole wheel (the embedded default) and
GroupLens' own layouts (ml-100k's u.data/u.item, ml-1m's .dat files, ml-latest's CSVs)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pandas as pd

from schemas.errors import DataError
from tasks.readers.files import check_readable, open_text, read_bytes, read_csv, read_string_table
from tasks.readers.values import as_ids, require_columns, to_float, to_int_timestamps


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
            "user_id": as_ids(inter["user_id"]),
            "item_id": as_ids(inter["item_id"]),
            "timestamp": to_int_timestamps(inter["timestamp"], inter_path, "timestamp", "s", first_line=2)[0],
            "rating": to_float(inter["rating"], inter_path, "rating", first_line=2) if "rating" in inter else None,
        }
    )
    return interactions, pd.DataFrame({"item_id": as_ids(items["item_id"]), "title": title})


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
            "user_id": as_ids(inter[0]),
            "item_id": as_ids(inter[1]),
            "timestamp": to_int_timestamps(inter[3], inter_path, "timestamp", "s", first_line)[0],
            "rating": to_float(inter[2], inter_path, "rating", first_line),
        }
    )
    return interactions, pd.DataFrame({"item_id": as_ids(items[0]), "title": items[1].str.strip()})


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

    check_readable(path)
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
