"""The GroupLens and Amazon raw readers on small files in their real layouts, and what they say
about bad ones."""

import gzip
import json

import pandas as pd
import pytest

from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError
from tasks.data import ingest, prepare
from tasks.readers import read_amazon_raw, read_grouplens
from tasks.readers.files import read_csv, read_string_table
from tasks.readers.values import to_numbers


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
    (tmp_path / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Cité des enfants perdus, La (1995)::Animation\n".encode("latin-1"))
    inter, items = read_grouplens(tmp_path)
    assert list(inter["item_id"]) == ["1193", "661"] and list(inter["rating"]) == [5.0, 3.0]
    assert list(items["title"]) == ["One Flew Over the Cuckoo's Nest (1975)", "Cité des enfants perdus, La (1995)"]


def test_grouplens_10m_layout_has_half_stars_and_utf8_titles(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::122::5::838985046\r\n1::185::4.5::838983525\r\n\r\n")
    (tmp_path / "movies.dat").write_text("122::Boomerang (1992)::Comedy|Romance\n185::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy\n", encoding="utf-8")
    inter, items = read_grouplens(tmp_path)
    assert inter.to_dict("list") == {"user_id": ["1", "1"], "item_id": ["122", "185"],
                                     "timestamp": [838985046, 838983525], "rating": [5.0, 4.5]}
    assert list(items["title"]) == ["Boomerang (1992)", "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"]


def write_movielens_csv(folder, ratings: str, movies: str) -> None:
    """The ML-20M/25M/32M/ml-latest layout (and the files it has that are not read)."""
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
    (folder / "movies.csv").write_text("movieId,title,genres\n" + movies, encoding="utf-8")
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n")


def test_grouplens_csv_layout_of_ml_25m_and_ml_latest(tmp_path):
    ratings = "".join(f"{u},{m},{r},{1_100_000_000 + 100 * u + k}\n"
                      for u in range(1, 13) for k, (m, r) in enumerate([(1, "4.0"), (2, "0.5"), (3, "3.5")]))
    write_movielens_csv(tmp_path, ratings, '1,Toy Story (1995),Adventure|Animation\n'
                                           '2,"American President, The (1995)",Comedy|Drama|Romance\n'
                                           '3,"Misérables, Les (1995)",Drama|War\n')
    inter, items = read_grouplens(tmp_path)
    assert len(inter) == 36 and inter.iloc[1].to_dict() == {"user_id": "1", "item_id": "2", "timestamp": 1_100_000_101, "rating": 0.5}
    assert items.set_index("item_id")["title"].to_dict() == {
        "1": "Toy Story (1995)", "2": "American President, The (1995)", "3": "Misérables, Les (1995)"}
    cfg = DataConfig(name="ml-latest", domain="movies", data_root=tmp_path, k_core=0,
                     source=SourceConfig(format="grouplens", path=str(tmp_path)))
    _, seq, manifest = prepare(cfg)  # and the whole stage runs on it
    assert manifest["stats"]["interactions"] == 36
    assert len(pd.read_parquet(seq.path / "catalogue.parquet")) == 3


@pytest.mark.parametrize("name, content, message", [
    ("ratings.dat", "1::2::5::978300760\n1::3::5\n", r"ratings.dat: line 2 is not four '::'-separated fields .*'1::3::5'"),
    ("ratings.dat", "1::2::5::978300760\n1:3::5::978300761\n", r"line 2 is not four .*'1:3::5::978300761'"),
    ("ratings.dat", "1::2::5::978300760::7\n", r"line 1 is not four '::'-separated fields"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,5,978300760\n1,3,5,9,9\n", r"ratings.csv: line 3 is not four ','"),
    ("ratings.csv", "user,movie,rating,timestamp\n1,2,5,978300760\n", r"ratings.csv: expected the header userId,movieId,rating,timestamp, found 'user,movie,rating,timestamp'"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n", r"ratings.csv: has no ratings"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,five,978300760\n", r"ratings.csv: column 'rating' has 1 non-numeric value\(s\), e.g. lines \[2\]: \['five'\]"),
    ("u.data", "1\t2\t5\t881250949\n2\t2\t4\tlater\n", r"u.data: column 'timestamp' has 1 value\(s\) that are not "
                                                        r"timestamps \(read as s\), e.g. lines \[2\]: \['later'\]"),
    ("u.data", "1\t2\t5\t881250949\n2\t3\t4\n", r"u.data: line 2 is not four '\\t'-separated fields"),
])
def test_grouplens_bad_ratings_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    titles = {"ratings.dat": ("movies.dat", "2::A (1990)::x\n"), "ratings.csv": ("movies.csv", "movieId,title\n2,A (1990)\n"),
              "u.data": ("u.item", "2|A (1990)|x\n")}[name]
    (tmp_path / titles[0]).write_text(titles[1])
    with pytest.raises(DataError, match=message):
        read_grouplens(tmp_path)


def test_grouplens_ratings_not_utf8_name_the_byte(tmp_path):
    (tmp_path / "ratings.dat").write_bytes(b"1::2::5::978300760\n1::\xff::5::978300761\n")
    (tmp_path / "movies.dat").write_text("2::A (1990)::x\n")
    with pytest.raises(DataError, match=r"ratings.dat: not valid utf-8 text at byte 22 \(line 2\)"):
        read_grouplens(tmp_path)


NUMBER_TEXTS = ["1", "007", "-2", "+4", " 3", "5.0", ".5", "5.", "1e5", "nan", "inf", "-Infinity", "0x10", "1_0",
                "five", "", None, "1700000000123456789"]


@pytest.mark.parametrize("texts", [NUMBER_TEXTS, ["1", "2", None], ["1", "2.5"], ["0x10", "2"], ["1700000000123456789", "3"]])
def test_to_numbers_reads_what_pandas_reads(texts):
    """The Arrow fast path gives pandas' numbers, the same ones null, ints exact (a value equal to
    a float that lost digits would differ); each text alone and the lists, as Arrow strings and as
    Python objects."""
    for values in [texts, *([t] for t in texts)]:
        for dtype in ("string[pyarrow]", "str", object):
            series = pd.Series(values, dtype=dtype, index=range(10, 10 + len(values)))
            expected, got = pd.to_numeric(series, errors="coerce"), to_numbers(series)
            assert list(got.index) == list(expected.index)
            assert [None if pd.isna(v) else v for v in got] == [None if pd.isna(v) else v for v in expected], (values, dtype)


def test_to_numbers_takes_the_arrow_path_for_clean_numbers(monkeypatch):
    """Ids, ratings and unix times of a large log parse without pandas' per-value loop."""
    def refuse(*a, **k):
        raise AssertionError("pd.to_numeric called")
    monkeypatch.setattr(pd, "to_numeric", refuse)
    ints = to_numbers(pd.Series(["978300760", "3", None], dtype="string[pyarrow]"))
    assert list(ints.astype("Int64")) == [978300760, 3, pd.NA] and ints.dtype == "Int64"
    floats = to_numbers(pd.Series(["4.5", "3"], dtype="str"))
    assert list(floats) == [4.5, 3.0]


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
    assert inter.attrs["dropped"] == {"amazon_title_cleaning": {"items": 1, "interactions": 10}}
    assert inter.attrs["timestamp"]["release"] == "2018" and inter["timestamp"].iloc[0] == 1_500_000_000
    # and the whole stage runs on it
    cfg = DataConfig(name="amz", domain="products", data_root=tmp_path, k_core=0, rating_range=(1, 5),
                     source=SourceConfig(format="amazon_raw", path=str(tmp_path / "reviews.json.gz"),
                                         meta_path=str(tmp_path / "meta.json")))
    _, seq, manifest = prepare(cfg)
    assert manifest["stats"]["interactions"] == 20
    assert len(pd.read_parquet(seq.path / "catalogue.parquet")) == 2


def _review_2023(user: str, asin: str, parent: str, ms: int, rating: float = 5.0) -> dict:
    """A review line as the 2023 release writes it: the review's own title and text beside the ids."""
    return {"rating": rating, "title": "Five Stars", "text": "Works.", "images": [], "asin": asin,
            "parent_asin": parent, "user_id": user, "timestamp": ms, "helpful_vote": 0, "verified_purchase": True}


def test_amazon_raw_reads_the_2023_release(tmp_path):
    """2023 files: items are products (parent_asin; a variant's review counts for its product),
    times are milliseconds, the meta file is keyed by parent_asin and carries fields of varying
    type (price: number, text or null). A review's `title` is the review's, never the item's."""
    reviews = [_review_2023(f"AG{u}", "B01V" if u % 2 else "B01", "B01", 1_600_000_000_000 + 60_000 * u + 999)
               for u in range(6)]
    reviews += [_review_2023("AG0", "B02", "B02", 1_600_000_100_500, 3.0),
                _review_2023("AG1", "B03", "B03", 1_600_000_200_000),  # B03's title is 21 words
                _review_2023("AG2", "B04", "B04", 1_600_000_300_000)]  # B04 has no meta line
    meta = [{"main_category": "Tools", "title": "Drill &amp; Bits", "price": 12.5, "features": [], "details": {},
             "parent_asin": "B01"},
            {"main_category": "Tools", "title": "Saw", "price": "None", "features": ["x"], "details": {"a": 1},
             "parent_asin": "B02"},
            {"main_category": "Tools", "title": " ".join(["word"] * 21), "price": None, "parent_asin": "B03"}]
    (tmp_path / "Tools.jsonl.gz").write_bytes(gzip.compress("\n".join(map(json.dumps, reviews)).encode()))
    (tmp_path / "meta_Tools.jsonl").write_text("\n".join(map(json.dumps, meta)))
    inter, items = read_amazon_raw(tmp_path / "Tools.jsonl.gz", tmp_path / "meta_Tools.jsonl")
    assert items.set_index("item_id")["title"].to_dict() == {"B01": "Drill & Bits", "B02": "Saw"}
    assert inter.to_dict("list") == {
        "user_id": [f"AG{u}" for u in range(6)] + ["AG0"],
        "item_id": ["B01"] * 6 + ["B02"],
        "timestamp": [1_600_000_000 + 60 * u for u in range(6)] + [1_600_000_100],
        "rating": [5.0] * 6 + [3.0]}
    assert inter.attrs["timestamp"] == {"column": "timestamp", "unit": "ms", "release": "2023",
                                        "examples": ["1600000000999", "1600000060999", "1600000120999"]}
    assert inter.attrs["dropped"] == {"amazon_title_cleaning": {"items": 1, "interactions": 1},
                                      "amazon_without_meta": {"interactions": 1}}
    # ingested, with the manifest saying what was read and left out
    cfg = DataConfig(name="tools", domain="products", data_root=tmp_path, k_core=0, rating_range=(1, 5),
                     source=SourceConfig(format="amazon_raw", path=str(tmp_path / "Tools.jsonl.gz"),
                                         meta_path=str(tmp_path / "meta_Tools.jsonl")))
    manifest = json.loads((ingest(cfg).path / "manifest.json").read_text())
    assert manifest["interactions"] == 7 and manifest["timestamp"]["unit"] == "ms"
    assert manifest["dropped"] == inter.attrs["dropped"]


def test_amazon_raw_reads_the_2023_benchmark_csv_and_names_a_bad_line(tmp_path):
    """The release's benchmark files (`5core/rating_only/<Category>.csv`) with its meta file; a
    value that is no time is named by its line, as in a JSON-lines file."""
    (tmp_path / "Tools.csv").write_text("user_id,parent_asin,rating,timestamp\n"
                                        "AG0,B01,4.0,1600000000999\nAG1,B01,5.0,1600000060000\n")
    (tmp_path / "meta_Tools.jsonl").write_text(json.dumps({"title": "Drill", "parent_asin": "B01"}))
    inter, items = read_amazon_raw(tmp_path / "Tools.csv", tmp_path / "meta_Tools.jsonl")
    assert inter.to_dict("list") == {"user_id": ["AG0", "AG1"], "item_id": ["B01", "B01"],
                                     "timestamp": [1_600_000_000, 1_600_000_060], "rating": [4.0, 5.0]}
    assert items.to_dict("list") == {"item_id": ["B01"], "title": ["Drill"]}
    (tmp_path / "Tools.csv").write_text("user_id,parent_asin,rating,timestamp\nAG0,B01,4.0,1600000000999\n"
                                        "AG1,B01,5.0,2020-09-13 12:26\n")
    with pytest.raises(DataError, match=r"Tools.csv: column 'timestamp' has 1 value\(s\) that are not timestamps "
                                        r"\(read as ms\), e.g. lines \[3\]"):
        read_amazon_raw(tmp_path / "Tools.csv", tmp_path / "meta_Tools.jsonl")
    lines = [_review_2023("AG0", "B01", "B01", 1_600_000_000_000), {**_review_2023("AG1", "B01", "B01", 0), "rating": "five"}]
    (tmp_path / "Tools.jsonl").write_text("\n".join(map(json.dumps, lines)))
    with pytest.raises(DataError, match=r"Tools.jsonl: column 'rating' has 1 non-numeric value\(s\), e.g. lines \[2\]"):
        read_amazon_raw(tmp_path / "Tools.jsonl", tmp_path / "meta_Tools.jsonl")
    lines = [{k: v for k, v in _review_2023("AG0", "B01", "B01", 1).items() if k != "parent_asin"},
             _review_2023("AG1", "B01", "B01", 1_600_000_000_000)]
    (tmp_path / "Tools.jsonl").write_text("\n".join(map(json.dumps, lines)))
    with pytest.raises(DataError, match=r"Tools.jsonl: 1 row\(s\) without a value in \['user_id', 'parent_asin', "
                                        r"'timestamp'\], e.g. lines \[1\]; the first: \{'user_id': 'AG0', 'parent_asin': None"):
        read_amazon_raw(tmp_path / "Tools.jsonl", tmp_path / "meta_Tools.jsonl")


def test_amazon_raw_names_a_meta_file_of_the_other_release(tmp_path):
    (tmp_path / "Tools.jsonl").write_text(json.dumps(_review_2023("AG0", "B01", "B01", 1_600_000_000_000)))
    (tmp_path / "meta_Tools.json").write_text(json.dumps({"asin": "B01", "title": "Drill"}))  # 2018's meta
    with pytest.raises(DataError, match=r"meta_Tools.json: its lines have no 'parent_asin' field, which the Amazon "
                                        r"Reviews 2023 meta file keys its items by \(the reviews Tools.jsonl"):
        read_amazon_raw(tmp_path / "Tools.jsonl", tmp_path / "meta_Tools.json")


def test_amazon_raw_names_both_releases_for_a_file_of_neither(tmp_path):
    (tmp_path / "Tools.jsonl").write_text(json.dumps({"user": "u", "item": "B01", "ts": 1}))
    (tmp_path / "meta_Tools.jsonl").write_text(json.dumps({"parent_asin": "B01", "title": "Drill"}))
    with pytest.raises(DataError, match=r"Tools.jsonl: not an Amazon Reviews file: its lines lack the user, item and "
                                        r"time fields of either release \(2018: reviewerID, asin, unixReviewTime; "
                                        r"2023: user_id, parent_asin, timestamp\); found \[\]"):
        read_amazon_raw(tmp_path / "Tools.jsonl", tmp_path / "meta_Tools.jsonl")


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
    from tasks.readers.amazon import _json_lines, _json_lines_by_line

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
    from tasks.readers.amazon import _json_lines

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
    from tasks.readers.amazon import _json_lines

    (tmp_path / "reviews.json").write_bytes(content)
    with pytest.raises(DataError, match=message):
        _json_lines(tmp_path / "reviews.json", FIELDS)


def test_json_lines_truncated_gzip_is_named(tmp_path):
    from schemas.errors import DataError
    from tasks.readers.amazon import _json_lines

    text = "".join(json.dumps({"reviewerID": f"A{i}", "asin": "B1", "unixReviewTime": 1_500_000_000 + i}) + "\n"
                   for i in range(2000))
    (tmp_path / "reviews.json.gz").write_bytes(gzip.compress(text.encode())[:-30])
    with pytest.raises(DataError, match=r"reviews.json.gz: corrupt or truncated gzip file"):
        _json_lines(tmp_path / "reviews.json.gz", FIELDS)


STRING_TABLES = {
    "plain": b"user,item,time\nu1,i1,5\nu2,i2,6\n",
    "quoted separators, quotes and line breaks": b'user,title\nu1,"Heat, The (1995)"\nu2,"say ""hi"""\nu3,"two\nlines"\n',
    "empty and quoted empty fields are null, NA is text": b'a,b,c\n,"",NA\nnull,N/A,NaN\n',
    "byte order mark, CRLF, blank lines": b"\xef\xbb\xbfa,b\r\n1,2\r\n\r\n3,4\r\n\r\n",
    "spaces kept, unicode": " a,b \n é , 東京 \n".encode(),
    "short row (pandas pads it)": b"a,b,c\n1,2\n3,4,5\n",
    "long row": b"a,b\n1,2\n3,4,5\n",
    "empty header name": b"a,,c\n1,2,3\n",
    "repeated header name": b"a,b,a\n1,2,3\n",
    "header only": b"a,b\n",
    "empty": b"",
    "invalid UTF-8": b"a,b\n1,\xff\n",
}


@pytest.mark.parametrize("name", list(STRING_TABLES))
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_string_tables_read_as_pandas_reads_them(tmp_path, name, suffix):
    """pyarrow's reading of a string table equals pandas' (`read_csv` with the options it stands
    for), or both stop with the same DataError."""
    path = tmp_path / f"t{suffix}"
    path.write_bytes(gzip.compress(STRING_TABLES[name]) if suffix.endswith(".gz") else STRING_TABLES[name])

    def outcome(read):
        try:
            return read()
        except DataError as e:
            return str(e)
    expected = outcome(lambda: read_csv(path, dtype=str, keep_default_na=False, na_values=[""]))
    got = outcome(lambda: read_string_table(path))
    if isinstance(expected, str):
        assert got == expected
    else:
        pd.testing.assert_frame_equal(got, expected)


def test_string_tables_are_read_by_arrow(tmp_path, monkeypatch):
    """Files pyarrow reads as pandas would never reach pandas' parser."""
    def refuse(*a, **k):
        raise AssertionError("pandas read_csv called")
    monkeypatch.setattr(pd, "read_csv", refuse)
    for suffix in (".csv", ".tsv.gz"):
        path = tmp_path / f"t{suffix}"
        raw = STRING_TABLES["quoted separators, quotes and line breaks"].replace(b",", b"\t" if "tsv" in suffix else b",")
        path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
        frame = read_string_table(path, "\t" if "tsv" in suffix else ",")
        assert frame["user"].tolist() == ["u1", "u2", "u3"] and frame["title"].iloc[2] == "two\nlines"
    # line breaks in quoted fields where pyarrow cuts the file into blocks (1 MB) to parse in parallel
    path = tmp_path / "big.csv"
    path.write_text("user,title\n" + "".join(f'u{i},"line {i}\nand ""more"""\n' for i in range(60_000)))
    frame = read_string_table(path)
    assert len(frame) == 60_000 and frame["title"].iloc[-1] == 'line 59999\nand "more"'


def test_a_zip_given_for_a_folder_format_says_to_unzip_it(tmp_path):
    import zipfile

    archive = tmp_path / "ml-25m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-25m/ratings.csv", "userId,movieId,rating,timestamp\n1,2,5,978300760\n")
    cfg = DataConfig(name="zipped", data_root=tmp_path, source=SourceConfig(format="grouplens", path=str(archive)))
    with pytest.raises(DataError, match=r"ml-25m.zip: source.format=grouplens reads a folder, and this is a file: "
                                        r"a zip archive, which is read once unpacked: unzip it"):
        prepare(cfg)
    assert not (tmp_path / "ingested").exists()


def test_recbole_bad_values_name_the_file_and_line(tmp_path):
    """A RecBole .inter file has a `name:type` header, so its first data row is line 2."""
    from tasks.readers import read_recbole

    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                      "1\t2\t5\t881250949\n2\t2\tfive\t881250950\n")
    (tmp_path / "x.item").write_text("item_id:token\tmovie_title:token_seq\n2\tA\n")
    with pytest.raises(DataError, match=r"x.inter: column 'rating' has 1 non-numeric value\(s\), e.g. lines \[3\]: "
                                        r"\['five'\]"):
        read_recbole(tmp_path)
