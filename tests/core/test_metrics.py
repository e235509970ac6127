"""Ranking metrics against hand computation (RecBole style): hits, misses, ties, duplicate titles."""

import math

import numpy as np
import pytest

from cft_core.metrics import first_hit_ranks, ranking_metrics, title_ids


def test_hand_computed_ranks():
    # Four examples: hits at ranks 0, 2, 9 and a miss.
    m = ranking_metrics([0, 2, 9, -1], ks=(1, 3, 10, 20))
    assert m["HR@1"] == pytest.approx(1 / 4)
    assert m["HR@3"] == pytest.approx(2 / 4)
    assert m["HR@10"] == m["HR@20"] == pytest.approx(3 / 4)
    assert m["NDCG@1"] == pytest.approx(1 / 4)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(4)) / 4)  # 1/log2(2) + 1/log2(4)
    assert m["NDCG@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(11)) / 4)
    assert m["NDCG@20"] == m["NDCG@10"]


def test_boundary_rank_equal_to_k_is_a_miss():
    m = ranking_metrics([5], ks=(5, 6))
    assert m["HR@5"] == 0.0 and m["NDCG@5"] == 0.0
    assert m["HR@6"] == 1.0 and m["NDCG@6"] == pytest.approx(1 / math.log2(7))


def test_all_misses():
    m = ranking_metrics(np.full(7, -1), ks=(1, 3, 5, 10, 20, 50))
    assert set(m) == {f"{n}@{k}" for n in ("HR", "NDCG") for k in (1, 3, 5, 10, 20, 50)}
    assert all(v == 0.0 for v in m.values())


@pytest.mark.parametrize("bad", [[[0, 1]], [], [-2]])
def test_bad_input_is_refused(bad):
    with pytest.raises(ValueError):
        ranking_metrics(bad, ks=(1,))


def test_duplicate_titles_count_as_hits():
    # Items 3 and 7 share the target's title "Heat": the first of them ranked is the hit.
    titles = np.array(["A", "B", "Heat", "C", "Heat"])
    ranked_items = np.array([[1, 4, 2, 0], [0, 1, 3, 4]])  # item indices into `titles`
    ranks = first_hit_ranks(titles[ranked_items], np.array(["Heat", "Heat"]))
    assert ranks.tolist() == [1, 3]
    # A tie between two equal-titled items cannot change the rank of the first hit.
    ranks2 = first_hit_ranks(titles[np.array([[4, 2, 0]])], np.array(["Heat"]))
    assert ranks2.tolist() == [0]
    assert first_hit_ranks(titles[np.array([[0, 1]])], np.array(["Heat"])).tolist() == [-1]


def test_item_hit_ranks_count_duplicated_titles_and_never_the_padding():
    from cft_core.metrics import item_hit_ranks

    # Items 0 and 2 share title id 0 ("Heat"); -1 pads a short ranking and is no item, not item 0.
    title_of_item = np.array([0, 1, 0, 2])
    ranked_items = np.array([[1, 2, 0], [3, -1, -1], [1, 3, 0], [-1, -1, -1]])
    targets = np.array([0, 0, 0, 1])
    assert item_hit_ranks(ranked_items, title_of_item, targets).tolist() == [1, -1, 2, -1]


def test_title_ids_share_ids_between_duplicates():
    ids, table = title_ids(["x", "y", "x", "z"])
    assert ids.tolist() == [0, 1, 0, 2] and table == {"x": 0, "y": 1, "z": 2}


def test_per_row_metric_by_hand_and_its_mean_is_the_metric():
    from cft_core.metrics import per_row_metric

    ranks = [0, 2, 9, -1]
    np.testing.assert_allclose(per_row_metric(ranks, "NDCG@3"), [1.0, 0.5, 0.0, 0.0])  # 1/log2(2), 1/log2(4)
    np.testing.assert_allclose(per_row_metric(ranks, "HR@10"), [1.0, 1.0, 1.0, 0.0])
    m = ranking_metrics(ranks, ks=(3, 10))
    assert per_row_metric(ranks, "NDCG@10").mean() == pytest.approx(m["NDCG@10"])
    with pytest.raises(ValueError, match="HR@K or NDCG@K"):
        per_row_metric(ranks, "MRR")


def test_paired_bootstrap_interval_covers_a_known_difference():
    """Simulated rows with a true mean difference of 0.05: the 95% interval covers it in about
    95% of repetitions (checked loosely: 88-99% of 200), and an identical pair gives (0, 0, 0)."""
    from cft_core.metrics import paired_bootstrap_ci

    rng = np.random.default_rng(1)
    covered = 0
    for rep in range(200):
        base = rng.random(300)  # per-row difficulty, shared by both methods
        a = base + 0.05 + rng.normal(0, 0.2, 300)
        b = base + rng.normal(0, 0.2, 300)
        _, low, high = paired_bootstrap_ci(a, b, resamples=500, seed=rep)
        covered += low <= 0.05 <= high
    assert 0.88 <= covered / 200 <= 0.99
    assert paired_bootstrap_ci(np.ones(5), np.ones(5)) == (0.0, 0.0, 0.0)


def test_seed_and_row_bootstrap_covers_a_known_difference_and_holds_the_seed_spread():
    """Simulated S=8 seeds x R=200 rows with a true difference of 0.05 that each training seed
    shifts (sd 0.05): the two-level interval covers 0.05 in most repetitions (loosely 85-99% of
    150; a percentile bootstrap over 8 clusters runs a little narrow), and it is wider than the
    rows-only interval of the seed means, which ignores the seed spread and misses far more often."""
    from cft_core.metrics import paired_bootstrap_ci, paired_bootstrap_ci_seeds

    rng = np.random.default_rng(3)
    covered = rows_only_covered = 0
    for rep in range(150):
        diff = 0.05 + rng.normal(0, 0.05, (8, 1)) + rng.normal(0, 0.3, (8, 200))
        mean, low, high = paired_bootstrap_ci_seeds(diff, resamples=400, seed=rep)
        assert mean == pytest.approx(diff.mean())
        covered += low <= 0.05 <= high
        _, rlow, rhigh = paired_bootstrap_ci(diff.mean(axis=0), np.zeros(200), resamples=400, seed=rep)
        rows_only_covered += rlow <= 0.05 <= rhigh
    assert 0.85 <= covered / 150 <= 0.99
    assert rows_only_covered < covered
    assert paired_bootstrap_ci_seeds(np.zeros((3, 4))) == (0.0, 0.0, 0.0)
