"""Real datasets through ingest -> validate -> build, checked against plain pandas."""

import filecmp
import importlib.resources
import json
import unicodedata

import pandas as pd
import pyarrow.parquet as pq
import pytest

from schemas.config import DataConfig, SourceConfig
from tasks.data import prepare
from tests.conftest import SHARED_DATA
from tests.data.stage_content import check_pinned

ML100K = SHARED_DATA / "ml-100k_recbole"
AMAZON = SHARED_DATA / "amazon18_minionerec"


def _expected_ml100k_counts(inter: pd.DataFrame, k: int = 5) -> tuple[int, int, int]:
    """Independent: k-core with value_counts, then samples = interactions - users."""
    df = inter
    while True:
        uc, ic = df["user_id"].value_counts(), df["item_id"].value_counts()
        if uc.min() >= k and ic.min() >= k:
            break
        df = df[df["user_id"].map(uc) >= k]
        df = df[df["item_id"].map(df["item_id"].value_counts()) >= k]
    return df["user_id"].nunique(), df["item_id"].nunique(), len(df)


def _splits(seq_dir):
    return {n: pq.read_table(seq_dir / f"{n}.parquet").to_pandas() for n in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def ml100k_default(tmp_path_factory):
    cfg = DataConfig(data_root=tmp_path_factory.mktemp("root"))
    return cfg, prepare(cfg)


def test_ml100k_default_source_counts(ml100k_default):
    cfg, (ingested, seq, manifest) = ml100k_default
    # Expected figures from the same file the default source reads (inside the recbole wheel),
    # with plain pandas.
    raw = pd.read_csv(importlib.resources.files("recbole") / "dataset_example/ml-100k/ml-100k.inter", sep="\t")
    raw.columns = [c.split(":")[0] for c in raw.columns]
    users, items, n = _expected_ml100k_counts(raw)
    stats = manifest["stats"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (users, items, n)
    total = n - users  # one sample per position >= 1 of each user
    assert (stats["samples_train"], stats["samples_valid"], stats["samples_test"]) == (
        int(total * 0.8), int(total * 0.9) - int(total * 0.8), total - int(total * 0.9))
    s = _splits(seq.path)
    assert s["train"]["history_item_ids"].map(len).between(1, 10).all()
    # chronological split: no valid/test target earlier than any train target
    assert s["valid"]["timestamp"].min() >= s["train"]["timestamp"].max()
    assert s["test"]["timestamp"].min() >= s["valid"]["timestamp"].max()
    # the catalogue covers every target and history item
    cat = pq.read_table(seq.path / "catalogue.parquet").to_pandas()
    ids = set(cat["item_id"])
    for df in s.values():
        assert set(df["target_item_id"]) <= ids
        assert {i for h in df["history_item_ids"] for i in h} <= ids
    assert json.loads((ingested.path / "validation.json").read_text())["success"]


def test_rerun_reuses_and_is_byte_identical(ml100k_default, tmp_path):
    cfg, (_, seq, _) = ml100k_default
    again = prepare(cfg)
    assert again[0].reused and again[1].reused and again[1].path == seq.path
    other = prepare(cfg.model_copy(update={"data_root": tmp_path}))  # fresh build elsewhere
    assert not other[1].reused
    for name in ("train.parquet", "valid.parquet", "test.parquet", "catalogue.parquet"):
        assert filecmp.cmp(seq.path / name, other[1].path / name, shallow=False), name


def test_stage_output_is_what_its_code_version_names(ml100k_default):
    _, (ingested, seq, _) = ml100k_default
    check_pinned("recbole_package", ingested.path, seq.path)


def test_ml100k_from_shared_data_matches_the_package(ml100k_default, tmp_path):
    if not ML100K.is_dir():
        pytest.skip(f"{ML100K} not present")
    _, (_, seq_pkg, _) = ml100k_default
    cfg = DataConfig(data_root=tmp_path, source=SourceConfig(format="recbole", path=str(ML100K)),
                     input_roots=[SHARED_DATA])
    _, seq, _ = prepare(cfg)
    # Same bytes in, same records out (the two sources are the same files).
    for name in ("train.parquet", "test.parquet"):
        assert filecmp.cmp(seq_pkg.path / name, seq.path / name, shallow=False)


def test_amazon_industrial_history_derived(tmp_path):
    if not AMAZON.is_dir():
        pytest.skip(f"{AMAZON} not present")
    cfg = DataConfig(name="amazon", domain="products", data_root=tmp_path, k_core=0,
                     source=SourceConfig(format="d3_csv", path=str(AMAZON)), input_roots=[SHARED_DATA])
    _, seq, manifest = prepare(cfg)
    # Independent reconstruction: per user, first row's history + every row's target.
    seqs = {}
    for split in ("valid", "test"):
        df = pd.read_csv(next((AMAZON / split).glob("*.csv")))
        for r in df.itertuples():
            if r.user_id not in seqs:
                seqs[r.user_id] = list(eval_list(r.history_item_id))
            seqs[r.user_id].append(r.item_id)
    n_inter = sum(len(v) for v in seqs.values())
    assert manifest["stats"]["users"] == len(seqs)
    assert manifest["stats"]["interactions"] == n_inter
    total = sum(manifest["stats"][f"samples_{k}"] for k in ("train", "valid", "test"))
    assert total == n_inter - len(seqs)
    s = _splits(seq.path)
    assert s["valid"]["timestamp"].min() >= s["train"]["timestamp"].max()
    # titles come from the info file
    info = dict(line.split("\t")[2:0:-1] for line in (next((AMAZON / "info").glob("*.txt"))).read_text().splitlines())
    cat = pq.read_table(seq.path / "catalogue.parquet").to_pandas()

    def normalised(title: str) -> str:  # NFC, no control characters (these titles have no format ones), single spaces
        title = "".join(c for c in unicodedata.normalize("NFC", title) if c.isspace() or unicodedata.category(c) != "Cc")
        return " ".join(title.split())

    assert all(normalised(info[src]) == t for src, t in zip(cat["source_item_id"], cat["title"], strict=True))


def eval_list(text: str) -> list[int]:
    """Parse "[1, 2, 3]" without eval."""
    return [int(x) for x in text.strip("[]").split(",") if x.strip()]
