"""The synthetic source (tasks/synthetic.py): deterministic per seed, the planted p recovered by
counting transitions, popularity that drifts when asked, and rows that go through the same
ingest, validation and sequence building as real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.config import load_config
from tasks.synthetic import generate, popularity_cdf

ROOT = Path(__file__).resolve().parents[2]


def test_deterministic_per_seed():
    a, b = generate(300, 80, 0.5, 1.0, 10, seed=3), generate(300, 80, 0.5, 1.0, 10, seed=3)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    c = generate(300, 80, 0.5, 1.0, 10, seed=4)
    assert not a.interactions["item_id"].equals(c.interactions["item_id"])
    assert a.items["title"].is_unique and len(a.items) == 80


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_the_planted_p_is_recovered_by_counting(p):
    """A transition hits succ(prev) when it follows (probability p) or when the popularity draw
    happens to pick succ(prev) (probability pop(succ(prev))): frac = p + (1 - p) * mean pop, so
    p = (frac - m) / (1 - m)."""
    users, length, items = 4000, 20, 400
    d = generate(users, items, p, 1.0, length, seed=11)
    chosen = d.interactions["item_id"].astype(int).to_numpy().reshape(users, length)
    assert np.all(np.diff(d.interactions["timestamp"].to_numpy().reshape(users, length), axis=1) > 0)
    prev, nxt = chosen[:, :-1].ravel(), chosen[:, 1:].ravel()
    frac = np.mean(nxt == d.successor[prev])
    pop = np.diff(np.concatenate([[0.0], popularity_cdf(items, 1.0)]))  # no drift: item i has rank i
    m = np.mean(pop[d.successor[prev]])
    assert abs((frac - m) / (1 - m) - p) < 0.015  # ~76k transitions: standard error < 0.004
    assert abs(d.followed.reshape(users, length)[:, 1:].mean() - p) < 0.01


def test_drift_moves_popularity_over_time():
    steady, drifting = (generate(3000, 200, 0.0, 1.2, 10, drift=d, seed=5).interactions for d in (0.0, 0.5))

    def top_early_late(inter):
        t = inter["timestamp"]
        early = inter[t < t.quantile(0.25)]["item_id"].value_counts().index[:5]
        late = inter[t > t.quantile(0.75)]["item_id"].value_counts().index[:5]
        return set(early), set(late)

    early, late = top_early_late(steady)
    assert len(early & late) >= 4  # the same favourites all year
    early, late = top_early_late(drifting)
    assert len(early & late) <= 1  # a quarter of the catalogue later, other favourites


def test_synthetic_rows_go_through_the_pipeline(tmp_path):
    from tasks.data import prepare

    cfg = load_config(ROOT / "configs/synthetic.yaml", [f"data.data_root={tmp_path}",
                                                        "data.source.synthetic={users: 300, items: 60, history_length: 8}"])
    ingested, sequences, manifest = prepare(cfg.data)  # validation raises on a failed expectation
    inter = pd.read_parquet(ingested.path / "interactions.parquet")
    assert len(inter) == 300 * 8 and (ingested.path / "validation.json").is_file()
    assert manifest["stats"]
    train = pd.read_parquet(sequences.path / "train.parquet")
    assert len(train) > 0 and train["history_titles"].map(len).max() <= cfg.data.max_history
    again = prepare(cfg.data)
    assert again[0].reused and again[1].path == sequences.path  # the settings are the data: reused
    other = prepare(cfg.updated({"data.source.synthetic.seed": 1}).data)
    assert other[0].path != ingested.path
