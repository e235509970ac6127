"""Amazon Reviews: a category's reviews and meta files of the 2018 or the 2023 release (JSON lines,
or the 2023 benchmark CSVs), told apart by their fields, with D3's title cleaning."""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path

import pandas as pd

from schemas.errors import DataError
from tasks.readers.files import arrow_input, check_readable, json_objects, read_string_table
from tasks.readers.values import (
    as_ids,
    refuse_incomplete_rows,
    require_columns,
    to_float,
    to_int_timestamps,
)

log = logging.getLogger(__name__)


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

    check_readable(path)
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in fields.items()])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        with arrow_input(path) as stream:
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
    that is no JSON object or no UTF-8, or the gzip file that is corrupt (`json_objects`)."""
    columns: dict[str, list] = {name: [] for name in fields}
    for n, row in json_objects(path):
        for name, values in columns.items():
            value = row.get(name)
            if isinstance(value, (list, dict)):  # (it would be read as the text "['A1']")
                raise DataError(f"{path}: line {n}: field {name!r} holds a JSON {type(value).__name__} "
                                f"({json.dumps(value)[:60]}), where one value belongs")
            values.append(value)
    return pd.DataFrame(columns)


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
    refuse_incomplete_rows(reviews, [user, item, time], reviews_path, first_line)
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
            "user_id": as_ids(reviews[user], reviews_path, user),
            "item_id": as_ids(reviews[item], reviews_path, item),
            "timestamp": timestamps,
            "rating": to_float(reviews[rating], reviews_path, rating, first_line) if rating in reviews else None,
        }
    ).reset_index(drop=True)
    interactions.attrs["timestamp"] = {"column": time, "unit": unit, "release": release,
                                       "examples": [str(v) for v in reviews[time].head(3)]}
    interactions.attrs["dropped"] = {k: v for k, v in dropped.items() if v["interactions"] or v.get("items")}
    return interactions, pd.DataFrame({"item_id": as_ids(meta[key], meta_path, key), "title": meta["title"]})
