"""Sequence building on hand-made interactions: exact records, k-core, splits."""

import json

import numpy as np
import pandas as pd
import pytest

from cft_core.sequences import build_records, dictionary_codes, k_core, lexsort
from schemas.config import DataConfig
from tasks.settings import sequence_settings


def settings(**fields):
    """Sequence settings as a profile with these `data:` fields gives them."""
    return sequence_settings(DataConfig(**fields))


def _inter(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


ITEMS = pd.DataFrame({"item_id": list("abcdef"), "title": ["A", "B", "C", "D", "E", "F"]})


def test_records_by_hand():
    # u1: a(1) b(2) c(3) d(4); u2: c(5) a(6) e(7). No k-core, history of at most 2.
    inter = _inter([("u1", "a", 1), ("u1", "c", 3), ("u1", "b", 2), ("u1", "d", 4),
                    ("u2", "c", 5), ("u2", "a", 6), ("u2", "e", 7)])
    splits, cat, stats = build_records(inter, ITEMS, settings(k_core=0, max_history=2, split_ratios=(0.6, 0.2, 0.2)))
    title = dict(zip(cat["item_id"], cat["title"], strict=True))
    got = []
    for name in ("train", "valid", "test"):
        for r in splits[name].to_pylist():
            got.append((name, r["user_id"], [title[i] for i in r["history_item_ids"]], r["target_title"], r["timestamp"]))
            assert r["history_titles"] == [title[i] for i in r["history_item_ids"]]
    # 5 samples sorted by target time: int(0.6*5)=3 train, int(0.8*5)-3=1 valid, 1 test
    assert got == [
        ("train", "u1", ["A"], "B", 2),
        ("train", "u1", ["A", "B"], "C", 3),
        ("train", "u1", ["B", "C"], "D", 4),
        ("valid", "u2", ["C"], "A", 6),
        ("test", "u2", ["C", "A"], "E", 7),
    ]
    assert stats["users"] == 2 and stats["items"] == 5 and stats["interactions"] == 7
    assert sorted(cat["item_id"]) == list(range(5))  # dense ids


def test_leave_one_out():
    inter = _inter([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "d", 4), ("u2", "a", 1), ("u2", "b", 9)])
    splits, cat, _ = build_records(inter, ITEMS, settings(k_core=0, split="leave_one_out"))
    title = dict(zip(cat["item_id"], cat["title"], strict=True))
    targets = {n: sorted((r["user_id"], title[r["target_item_id"]]) for r in t.to_pylist()) for n, t in splits.items()}
    assert targets == {"train": [("u1", "B")], "valid": [("u1", "C")], "test": [("u1", "D"), ("u2", "B")]}


def test_iterative_k_core_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    df = _inter([(f"u{rng.integers(30)}", f"i{rng.integers(40)}", t) for t in range(600)])
    ours = k_core(df, 5)
    # independent: remove one offender at a time with value_counts
    ref = df
    while True:
        uc, ic = ref["user_id"].value_counts(), ref["item_id"].value_counts()
        bad_u, bad_i = uc[uc < 5].index, ic[ic < 5].index
        if len(bad_u) == 0 and len(bad_i) == 0:
            break
        ref = ref[~ref["user_id"].isin(bad_u) & ~ref["item_id"].isin(bad_i)]
    assert sorted(map(tuple, ours.values.tolist())) == sorted(map(tuple, ref.values.tolist()))
    assert list(ours.index) == list(ref.index)  # the same rows, in their order
    assert ours["user_id"].value_counts().min() >= 5 and ours["item_id"].value_counts().min() >= 5


def test_caps_are_seeded_and_keep_time_order():
    inter = _inter([(f"u{u}", "abcdef"[(u + t) % 6], 100 * t + u) for u in range(20) for t in range(6)])
    s = settings(k_core=0, max_samples={"train": 10}, seed=3)
    a, _, _ = build_records(inter, ITEMS, s)
    b, _, _ = build_records(inter, ITEMS, s)
    assert a["train"].num_rows == 10 and a["train"].equals(b["train"])
    ts = a["train"].column("timestamp").to_pylist()
    assert ts == sorted(ts)


def test_a_split_comes_in_batches_of_bounded_title_bytes(monkeypatch):
    """One Arrow string array holds under 2 GiB, which a large split's history titles outgrow
    (10M interactions: "Negative offsets in binary array"). Records are built in batches of
    under 2 x MAX_BATCH_TITLE_BYTES of titles (UTF-8 bytes, not characters), and they are the
    same records whatever the batch size."""
    import cft_core.sequences as sequences

    items = ITEMS.assign(title=["Ä" * 3, "B", "Ç" * 5, "D", "É", "F"])
    rng = np.random.default_rng(0)
    inter = _inter([(f"u{u}", "abcdef"[rng.integers(6)], 100 * t + u) for u in range(20) for t in range(6)])
    s = settings(k_core=0, max_history=3)
    whole, _, _ = build_records(inter, items, s)
    monkeypatch.setattr(sequences, "MAX_BATCH_TITLE_BYTES", 40)
    batched, _, stats = build_records(inter, items, s)
    assert all(len(whole[n].to_batches()) == 1 for n in whole)
    assert len(batched["train"].to_batches()) > 5
    for name in whole:
        assert batched[name].to_pylist() == whole[name].to_pylist()
        for batch in batched[name].to_batches():
            size = sum(len(t.encode()) for r in batch.to_pylist() for t in [*r["history_titles"], r["target_title"]])
            assert size < 2 * 40 or batch.num_rows == 1
    assert stats["mean_history_train"] == np.mean([len(r["history_item_ids"]) for r in whole["train"].to_pylist()])


def reference_records(inter: pd.DataFrame, catalogue: pd.DataFrame, max_history: int) -> list[dict]:
    """Every sample written from the method's steps with a loop per user: rows by (time, catalogue
    id), each position >= 1 a sample whose history is the previous <= max_history items; all the
    samples by (time, user)."""
    dense = dict(zip(catalogue["source_item_id"], catalogue["item_id"], strict=True))
    title = dict(zip(catalogue["item_id"], catalogue["title"], strict=True))
    samples = []
    for user, rows in inter.groupby("user_id"):
        seq = sorted((t, dense[i]) for i, t in zip(rows["item_id"], rows["timestamp"], strict=True))
        for p in range(1, len(seq)):
            history = [d for _, d in seq[max(0, p - max_history):p]]
            samples.append({"user_id": user, "history_item_ids": history, "history_titles": [title[d] for d in history],
                            "target_item_id": seq[p][1], "target_title": title[seq[p][1]], "timestamp": seq[p][0]})
    return sorted(samples, key=lambda r: (r["timestamp"], r["user_id"]))


@pytest.mark.parametrize("split", ["chronological", "leave_one_out"])
def test_records_equal_a_loop_per_user(split):
    """Many users, ties in time (broken by catalogue id), histories cut at max_history: the
    records of all splits together are the reference's, in its order within each split."""
    rng = np.random.default_rng(1)
    inter = _inter([(f"u{rng.integers(40)}", "abcdef"[rng.integers(6)], int(rng.integers(50))) for _ in range(900)])
    splits, catalogue, stats = build_records(inter, ITEMS, settings(k_core=0, max_history=4, split=split))
    expected = reference_records(inter, catalogue, 4)
    got = [r for name in ("train", "valid", "test") for r in splits[name].to_pylist()]
    assert sorted(got, key=lambda r: (r["timestamp"], r["user_id"], r["target_item_id"], r["history_item_ids"])) == \
        sorted(expected, key=lambda r: (r["timestamp"], r["user_id"], r["target_item_id"], r["history_item_ids"]))
    for name in splits:
        order = [(r["timestamp"], r["user_id"]) for r in splits[name].to_pylist()]
        assert order == sorted(order)
    assert stats["users"] == inter["user_id"].nunique() and stats["interactions"] == len(inter)


@pytest.mark.parametrize("ranges", [
    [(0, 60_000), (789_652_009, 1_574_327_703), (0, 160_000)],  # ML-25M's ranges: packed into 64 bits
    [(-5, 5), (0, 3), (7, 9)],  # negative values, many ties
    [(0, 2**40), (0, 2**30)],  # 71 bits: np.lexsort
    [(3, 4), (0, 2**62)],  # one value only in a key
])
def test_lexsort_is_numpys(ranges):
    rng = np.random.default_rng(0)
    keys = tuple(rng.integers(lo, hi, 5000) for lo, hi in ranges)
    assert np.array_equal(lexsort(keys), np.lexsort(keys))  # the same permutation: ties keep their order
    assert lexsort(tuple(k[:0] for k in keys)).tolist() == []


def test_dictionary_codes_name_each_row_by_one_dictionary():
    """A list, a plain chunked column and chunks with dictionaries of their own (as row groups are
    read) give one set of distinct values, each once, that the codes map back to the column."""
    import pyarrow as pa

    rows = ["b", "a", "b", "c", "a", "a"]
    per_chunk = pa.chunked_array([pa.array(rows[:3]).dictionary_encode(), pa.array(rows[3:]).dictionary_encode()])
    for column in (rows, pa.chunked_array([pa.array(rows[:2]), pa.array(rows[2:])]), per_chunk):
        values, codes = dictionary_codes(column)
        assert sorted(values.to_pylist()) == ["a", "b", "c"]
        assert [values[int(i)].as_py() for i in codes] == rows
    values, codes = dictionary_codes(pa.chunked_array([], pa.string()))
    assert len(values) == 0 and codes.dtype == np.int64 and codes.size == 0


def _utc(text: str) -> int:
    return int(pd.Timestamp(text, tz="UTC").timestamp())


# Three years of a shop, each adding two users who both bought two new items; with k_core 2 the
# window from 2018-10-01 keeps a and b, a year wider c and d too, two years wider e and f. Item x
# has no title, so it never counts. The data begin at 2017-03-01.
WIDENING = _inter([("u1", "a", _utc("2019-01-05")), ("u1", "b", _utc("2019-02-05")),
                   ("u2", "a", _utc("2019-03-05")), ("u2", "b", _utc("2019-04-05")),
                   ("u3", "c", _utc("2018-01-05")), ("u3", "d", _utc("2018-02-05")),
                   ("u4", "c", _utc("2018-03-05")), ("u4", "d", _utc("2018-04-05")),
                   ("u3", "x", _utc("2018-05-05")), ("u4", "x", _utc("2018-05-06")),
                   ("u5", "e", _utc("2017-03-01")), ("u5", "f", _utc("2017-04-05")),
                   ("u6", "e", _utc("2017-05-05")), ("u6", "f", _utc("2017-06-05"))])


@pytest.mark.parametrize(("min_items", "start", "kept"), [(2, "2018-10-01", 2), (3, "2017-10-01", 4),
                                                          (4, "2017-10-01", 4), (6, "2016-10-01", 6),
                                                          (7, "2016-10-01", 6)])
def test_the_window_widens_a_year_at_a_time_until_its_core_keeps_enough_items(min_items, start, kept):
    """D3 step 1 by hand: a year back at a time, counted after the k-core, items without a title
    left out; 7 items are never there, so it stops once the window holds the data's start."""
    from cft_core.sequences import core_of_window, widened_window_start

    s = settings(k_core=2, window_start="2018-10-01", window_end="2019-10-01")
    titled = pd.Index(list("abcdef"))
    assert widened_window_start(WIDENING, titled, s, min_items) == (_utc(start), kept)
    assert core_of_window(WIDENING, titled, _utc(start), s.window_end, 2)["item_id"].nunique() == kept


def test_a_year_before_29_february_is_28_february():
    from cft_core.sequences import year_before

    assert year_before(_utc("2020-02-29 13:00")) == _utc("2019-02-28 13:00")
    assert year_before(_utc("2018-10-01")) == _utc("2017-10-01")


def test_prepare_builds_the_widened_window_as_the_window_set_there(tmp_path):
    """`data.window_min_items` builds the window it finds, under the fingerprint of a profile that
    sets that start itself (the same window, the same folder); without it there are too few rows."""
    from schemas.config import SourceConfig
    from schemas.errors import DataError
    from tasks.data import prepare

    WIDENING[WIDENING["item_id"] != "x"].to_csv(tmp_path / "log.csv", index=False)
    (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"{i},Item {i.upper()}\n" for i in "abcdef"))

    def cfg(**fields):
        return DataConfig(name="shop", data_root=tmp_path / "data", input_roots=[tmp_path], k_core=2,
                          window_end="2019-10-01", source=SourceConfig(
            format="generic", path=str(tmp_path / "log.csv"), items_path=str(tmp_path / "items.csv")), **fields)

    with pytest.raises(DataError, match=r"the valid split\(s\) have no samples: 4 interactions of 2 users"):
        prepare(cfg(window_start="2018-10-01"))
    ingested, widened, manifest = prepare(cfg(window_start="2018-10-01", window_min_items=6))
    assert manifest["settings"]["window_start"] == _utc("2016-10-01") and manifest["stats"]["items"] == 6
    _, as_set, _ = prepare(cfg(window_start="2016-10-01"))
    assert as_set.fingerprint == widened.fingerprint and as_set.reused
    # the start found is kept beside the ingested tables: a run again does not count them again
    (memo,) = (ingested.path / "windows").iterdir()
    assert json.loads(memo.read_text()) == {"window_start": _utc("2016-10-01"), "items": 6, "min_items": 6}
    memo.write_text(json.dumps({"window_start": _utc("2018-10-01"), "items": 6, "min_items": 6}))  # (read, not counted)
    with pytest.raises(DataError, match=r"the valid split\(s\) have no samples"):
        prepare(cfg(window_start="2018-10-01", window_min_items=6))


def test_a_window_that_cannot_keep_enough_items_is_said_each_time(tmp_path, caplog):
    from schemas.config import SourceConfig
    from tasks.data import prepare

    WIDENING[WIDENING["item_id"] != "x"].to_csv(tmp_path / "log.csv", index=False)
    (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"{i},Item {i.upper()}\n" for i in "abcdef"))
    cfg = DataConfig(name="shop", data_root=tmp_path / "data", input_roots=[tmp_path], k_core=2,
                     window_start="2018-10-01", window_min_items=7, source=SourceConfig(
                         format="generic", path=str(tmp_path / "log.csv"), items_path=str(tmp_path / "items.csv")))
    for _ in range(2):  # (the second time from what the first kept)
        caplog.clear()
        prepare(cfg)
        assert ("data.window_min_items=7: the window starts at 2016-10-01 00:00:00+00:00, where its 2-core keeps 6 "
                "items; it holds all the data before its end, and no more items") in caplog.text


def test_window_min_items_needs_a_start_to_widen():
    with pytest.raises(ValueError, match="window_min_items widens a window back from its start"):
        DataConfig(window_min_items=10000)
