"""Happy paths of the GroupLens and Amazon raw readers, on small files in their real layouts."""

import gzip
import json

import pandas as pd
import pytest

from schemas.config import DataConfig, SourceConfig
from tasks.data import prepare
from tasks.readers import read_amazon_raw, read_grouplens


def test_grouplens_100k_layout(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t4\t881250949\n2\t20\t5\t881250950\n")
    # u.item is '|'-separated latin-1, title with the year, then dates and genre flags
    (tmp_path / "u.item").write_bytes("10|Café (1995)|01-Jan-1995||http://x|0|1\n20|Heat (1995)|01-Jan-1995||http://y|1|0\n".encode("latin-1"))
    inter, items = read_grouplens(tmp_path)
    assert inter.to_dict("list") == {"user_id": ["1", "2"], "item_id": ["10", "20"],
                                     "timestamp": [881250949, 881250950], "rating": [4.0, 5.0]}
    assert items.set_index("item_id")["title"].to_dict() == {"10": "Café (1995)", "20": "Heat (1995)"}


def test_grouplens_1m_layout(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    (tmp_path / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation\n".encode("latin-1"))
    inter, items = read_grouplens(tmp_path)
    assert list(inter["item_id"]) == ["1193", "661"] and list(inter["rating"]) == [5.0, 3.0]
    assert list(items["title"]) == ["One Flew Over the Cuckoo's Nest (1975)", "James and the Giant Peach (1996)"]


def test_amazon_raw_gzipped_drops_items_without_a_clean_title(tmp_path):
    reviews = [{"reviewerID": f"U{u}", "asin": asin, "overall": 5.0, "unixReviewTime": 1_500_000_000 + 10 * u + k}
               for u in range(10) for k, asin in enumerate(["A1", "A2", "A3"])]
    meta = [{"asin": "A1", "title": "Tom &amp; Jerry"}, {"asin": "A2", "title": "<span>junk</span>"},
            {"asin": "A3", "title": "  &quot;Widget&quot; "}]
    (tmp_path / "reviews.json.gz").write_bytes(gzip.compress("\n".join(map(json.dumps, reviews)).encode()))
    (tmp_path / "meta.json").write_text("\n".join(map(json.dumps, meta)))
    inter, items = read_amazon_raw(tmp_path / "reviews.json.gz", tmp_path / "meta.json")
    assert items.set_index("item_id")["title"].to_dict() == {"A1": "Tom & Jerry", "A3": "Widget"}
    assert set(inter["item_id"]) == {"A1", "A3"} and len(inter) == 20  # A2's reviews dropped
    # and the whole stage runs on it
    cfg = DataConfig(name="amz", domain="products", data_root=tmp_path, k_core=0, rating_range=(1, 5),
                     source=SourceConfig(format="amazon_raw", path=str(tmp_path / "reviews.json.gz"),
                                         meta_path=str(tmp_path / "meta.json")))
    _, seq, manifest = prepare(cfg)
    assert manifest["stats"]["interactions"] == 20
    assert len(pd.read_parquet(seq.path / "catalogue.parquet")) == 2


FIELDS = {"reviewerID": "string", "asin": "string", "overall": "float64", "unixReviewTime": "int64"}


def as_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as plain values (nulls as None, whole floats as ints), to compare two readers' frames."""
    def plain(v):
        if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
            return None
        return int(v) if isinstance(v, float) and v.is_integer() else v
    return [{k: plain(v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_json_lines_reads_what_the_line_by_line_reader_reads(tmp_path, suffix):
    """pyarrow's reader (`_json_lines`) and the Python one it falls back to give the same columns:
    only the fields asked for, a field a line lacks or has as null is null, blank lines skipped,
    a field no line has is no column."""
    from tasks.readers import _json_lines, _json_lines_by_line

    lines = [{"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1_500_000_000, "reviewText": "ok",
              "style": {"Format:": " DVD"}},
             {"reviewerID": "A2", "asin": "B2", "unixReviewTime": 1_500_000_001, "verified": True},
             {"reviewerID": "A3", "asin": "B1", "overall": None, "unixReviewTime": 1_500_000_002}]
    text = "\n".join(map(json.dumps, lines[:2])) + "\n\n" + json.dumps(lines[2]) + "\n"
    path = tmp_path / f"reviews{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    fast, slow = _json_lines(path, FIELDS), _json_lines_by_line(path, list(FIELDS))
    assert list(fast.columns) == list(FIELDS) and as_records(fast) == as_records(slow)
    assert as_records(fast)[1] == {"reviewerID": "A2", "asin": "B2", "overall": None, "unixReviewTime": 1_500_000_001}
    without_ratings = _json_lines(path, {"reviewerID": "string", "rating": "float64"})
    assert list(without_ratings.columns) == ["reviewerID"]


def test_json_lines_pyarrow_refuses_are_read_line_by_line(tmp_path):
    """A file whose field types vary between lines (an id written as a number, a time as text)
    is valid JSON lines that pyarrow's typed reader refuses: it is read line by line, as the
    reader before it read it, and the stage's conversions take it from there."""
    from tasks.readers import _json_lines

    path = tmp_path / "reviews.json"
    path.write_text('{"reviewerID": 17, "asin": "B1", "overall": "4.0", "unixReviewTime": "1500000000"}\n'
                    '{"reviewerID": "A2", "asin": "B1", "overall": 5, "unixReviewTime": 1500000001}\n')
    frame = _json_lines(path, FIELDS)
    assert frame.to_dict("list") == {"reviewerID": [17, "A2"], "asin": ["B1", "B1"], "overall": ["4.0", 5],
                                     "unixReviewTime": ["1500000000", 1500000001]}


@pytest.mark.parametrize(("content", "message"), [
    (b'{"reviewerID": "a", "asin": "x"}\n{oops\n', r"reviews.json: line 2 is not valid JSON"),
    (b'{"reviewerID": "a", "asin": "x"}\n[1, 2]\n', r"reviews.json: line 2 is a JSON list, not an object"),
    (b'{"reviewerID": "a", "asin": "x"}\n{"reviewerID": "b\xff\xfe", "asin": "x"}\n',
     r"reviews.json: line 2 is not valid utf-8 text at byte 17 of the line"),
    (b"\n\n", r"reviews.json: file holds no JSON lines"),
])
def test_json_lines_errors_name_the_line(tmp_path, content, message):
    from schemas.errors import DataError
    from tasks.readers import _json_lines

    (tmp_path / "reviews.json").write_bytes(content)
    with pytest.raises(DataError, match=message):
        _json_lines(tmp_path / "reviews.json", FIELDS)


def test_json_lines_truncated_gzip_is_named(tmp_path):
    from schemas.errors import DataError
    from tasks.readers import _json_lines

    text = "".join(json.dumps({"reviewerID": f"A{i}", "asin": "B1", "unixReviewTime": 1_500_000_000 + i}) + "\n"
                   for i in range(2000))
    (tmp_path / "reviews.json.gz").write_bytes(gzip.compress(text.encode())[:-30])
    with pytest.raises(DataError, match=r"reviews.json.gz: corrupt or truncated gzip file"):
        _json_lines(tmp_path / "reviews.json.gz", FIELDS)
