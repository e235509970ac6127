"""Happy paths of the GroupLens and Amazon raw readers, on small files in their real layouts."""

import gzip
import json

import pandas as pd

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
