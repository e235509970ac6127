"""The ingest key covers exactly the files a source's reader reads: a file left next to them (a
README, ML-25M's genome scores, a Spark `_SUCCESS` marker or `_temporary/` folder) is neither
digested nor a reason to ingest again, and a change to a file that is read always is."""

from pathlib import Path

import pandas as pd
import pytest

from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError
from tasks.data import ingest_target, read_source, source_files


def _grouplens_100k(folder: Path) -> list[str]:
    (folder / "u.data").write_text("1\t10\t4\t881250949\n2\t20\t5\t881250950\n")
    (folder / "u.item").write_text("10|Heat (1995)|01-Jan-1995||http://x|0\n20|Fargo (1996)|01-Jan-1996||http://y|1\n")
    (folder / "u1.base").write_text("1\t10\t4\t881250949\n")  # the 100K download's own splits: not read
    return ["u.data", "u.item"]


def _grouplens_dat(folder: Path) -> list[str]:
    (folder / "ratings.dat").write_text("1::10::5::978300760\n2::20::3::978302109\n")
    (folder / "movies.dat").write_text("10::Heat (1995)::Drama\n20::Fargo (1996)::Drama\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n")
    return ["ratings.dat", "movies.dat"]


def _grouplens_csv(folder: Path) -> list[str]:
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,1100000000\n2,20,0.5,1100000001\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n10,Heat (1995),Drama\n20,Fargo (1996),Drama\n")
    (folder / "genome-scores.csv").write_text("movieId,tagId,relevance\n10,1,0.5\n")
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,10,noir,1100000000\n")
    return ["ratings.csv", "movies.csv"]


def _recbole(folder: Path) -> list[str]:
    (folder / "shop.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t10\t1100000000\n2\t20\t1100000001\n")
    (folder / "shop.item").write_text("item_id:token\ttitle:token_seq\n10\tHeat\n20\tFargo\n")
    (folder / "shop.user").write_text("user_id:token\tage:float\n1\t30\n")
    return ["shop.inter", "shop.item"]


def _d3(folder: Path) -> list[str]:
    for split, (user, item) in zip(("train", "valid", "test"), [("u1", "1"), ("u1", "0"), ("u2", "1")], strict=True):
        (folder / split).mkdir()
        (folder / split / "shop.csv").write_text(f'user_id,history_item_id,item_id\n{user},"[0]",{item}\n')
    (folder / "info").mkdir()
    (folder / "info" / "shop.txt").write_text("Heat\t0\nFargo\t1\n")
    (folder / "info" / "notes.md").write_text("how this was made\n")
    (folder / "train" / "shop.json").write_text("{}\n")
    return ["train/shop.csv", "valid/shop.csv", "test/shop.csv", "info/shop.txt"]


def _generic_parts(folder: Path) -> list[str]:
    (folder / "part-0.csv").write_text("user_id,item_id,timestamp,title\n1,10,1100000000,Heat\n")
    (folder / "part-1.csv").write_text("user_id,item_id,timestamp,title\n2,20,1100000001,Fargo\n")
    (folder / "_SUCCESS").write_text("")  # what Spark leaves next to its parts
    (folder / ".part-0.csv.crc").write_text("crc\n")
    return ["part-0.csv", "part-1.csv"]


def _generic_partitioned(folder: Path) -> list[str]:
    """Spark's `partitionBy("day")` output, with a task's attempt still in `_temporary/`."""
    for day, (user, item) in [("2004-11-09", (1, 10)), ("2004-11-10", (2, 20))]:
        (folder / f"day={day}").mkdir()
        (folder / f"day={day}" / "part-00000-c000.csv").write_text(
            f"user_id,item_id,timestamp,title\n{user},{item},{1100000000 + user},Heat\n")
        (folder / f"day={day}" / ".part-00000-c000.csv.crc").write_text("crc\n")
    (folder / "_temporary" / "0" / "day=2004-11-11").mkdir(parents=True)
    (folder / "_temporary" / "0" / "day=2004-11-11" / "part-00000-c000.csv").write_text("user_id,item_id\n3,30\n")
    (folder / "_SUCCESS").write_text("")
    return ["day=2004-11-09/part-00000-c000.csv", "day=2004-11-10/part-00000-c000.csv"]


LAYOUTS = {
    "grouplens": {"u.data": _grouplens_100k, "ratings.dat": _grouplens_dat, "ratings.csv": _grouplens_csv},
    "recbole": {"atomic files": _recbole},
    "d3_csv": {"splits": _d3},
    "generic": {"folder of parts": _generic_parts, "partitioned dataset": _generic_partitioned},
}
CASES = [(fmt, name) for fmt, layouts in LAYOUTS.items() for name in layouts]


def _cfg(root: Path, fmt: str) -> DataConfig:
    return DataConfig(name="src", data_root=root, k_core=0, source=SourceConfig(format=fmt, path=str(root / "src")))


@pytest.mark.parametrize(("fmt", "layout"), CASES)
def test_the_ingest_key_covers_the_files_read_and_no_other(tmp_path, fmt, layout):
    folder = tmp_path / "src"
    folder.mkdir()
    read = LAYOUTS[fmt][layout](folder)
    cfg = _cfg(tmp_path, fmt)
    assert source_files(cfg) == [folder / name for name in read]
    out, fp, _ = ingest_target(cfg)
    frames = read_source(cfg)

    # Another file next to them, and one not read changed: the same key, and what is read
    # without any of them is the same.
    (folder / "README.txt").write_text("Summary of the dataset\n")
    others = [f for f in folder.rglob("*") if f.is_file() and f.relative_to(folder).as_posix() not in read]
    for f in others:
        f.write_text(f.read_text() + "changed\n")
    assert ingest_target(cfg)[:2] == (out, fp)
    for f in others:
        f.unlink()
    for got, expected in zip(read_source(cfg), frames, strict=True):
        pd.testing.assert_frame_equal(got, expected)

    # Every file that is read is in the key.
    for name in read:
        f = folder / name
        before = f.read_bytes()
        f.write_bytes(before + b"\n")
        assert ingest_target(cfg)[1] != fp, name
        f.write_bytes(before)


def test_generic_items_file_and_amazon_metadata_are_in_the_key(tmp_path):
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\n1,10,1100000000\n")
    (tmp_path / "items.csv").write_text("item_id,title\n10,Heat\n")
    cfg = DataConfig(name="src", data_root=tmp_path, source=SourceConfig(
        format="generic", path=str(tmp_path / "log.csv"), items_path=str(tmp_path / "items.csv")))
    assert source_files(cfg) == [tmp_path / "log.csv", tmp_path / "items.csv"]
    cfg = DataConfig(name="src", data_root=tmp_path, source=SourceConfig(
        format="amazon_raw", path=str(tmp_path / "Shop.json"), meta_path=str(tmp_path / "meta_Shop.json")))
    (tmp_path / "Shop.json").write_text("{}\n")
    (tmp_path / "meta_Shop.json").write_text("{}\n")
    assert source_files(cfg) == [tmp_path / "Shop.json", tmp_path / "meta_Shop.json"]


def test_a_file_the_layout_needs_that_is_missing_is_named(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    _grouplens_csv(folder)
    (folder / "movies.csv").unlink()
    with pytest.raises(DataError, match=r"src/movies.csv: file not found \(data.source.format=grouplens\)"):
        ingest_target(_cfg(tmp_path, "grouplens"))
    (folder / "movies.csv").mkdir()
    with pytest.raises(DataError, match=r"src/movies.csv: a folder, where a file is read"):
        ingest_target(_cfg(tmp_path, "grouplens"))
