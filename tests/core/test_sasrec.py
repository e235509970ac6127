"""SASRec baseline: it learns a sequential pattern, is causal in its input, and is seeded."""

import numpy as np
import torch

from cft_core.metrics import first_hit_ranks, ranking_metrics
from cft_core.sasrec import SASRec, SASRecSettings, encode_histories, sasrec_rank, train_sasrec


def test_encode_histories_left_pads_and_shifts_ids():
    x = encode_histories([[4, 5], [0, 1, 2, 3]], max_len=3)
    assert x.tolist() == [[0, 5, 6], [2, 3, 4]]  # ids + 1, 0 = padding, the last 3 items kept


def test_learns_next_item_is_last_plus_one():
    # The target is always (last history item + 1) mod N: a sequential rule popularity cannot learn.
    rng = np.random.default_rng(0)
    n = 30
    hist = [list(rng.integers(0, n, rng.integers(1, 6))) for _ in range(3000)]
    target = [(h[-1] + 1) % n for h in hist]
    s = SASRecSettings(max_len=5, dim=32, epochs=10, batch_size=32, dropout=0.0, seed=1)
    model = train_sasrec(hist[:2500], target[:2500], n, s)
    ranked = sasrec_rank(model, hist[2500:], 10)
    hr1 = ranking_metrics(first_hit_ranks(ranked, np.array(target[2500:])), [1])["HR@1"]
    assert hr1 > 0.9
    # Seeded: a training repeated ranks alike (a short one: the seed acts from the first batch on).
    short = SASRecSettings(max_len=5, dim=32, epochs=1, batch_size=32, dropout=0.1, seed=1)
    once, again = (sasrec_rank(train_sasrec(hist[:500], target[:500], n, short), hist[2500:], 10) for _ in range(2))
    assert (once == again).all()


def test_padding_carries_no_information():
    """A left-padded history [3, 7] in a window of 6: the four padded slots are zero vectors, so
    neither the padding embedding nor the position embeddings of those slots change the scores
    (both would leak in without the padding mask), while a real item's embedding does."""
    torch.manual_seed(0)
    model = SASRec(20, SASRecSettings(max_len=6, dim=16, dropout=0.0)).eval()
    x = encode_histories([[3, 7]], 6)
    assert x.tolist() == [[0, 0, 0, 0, 4, 8]]
    with torch.no_grad():
        before = model(x)
        model.items.weight[0] += torch.randn(16)  # the padding id's embedding
        model.positions.weight[:4] += torch.randn(4, 16)  # the positions of the padded slots
        after = model(x)
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
        model.items.weight[4] += torch.randn(16)  # item 3's embedding: the scores must move
        assert not torch.allclose(model(x), before, atol=1e-3)
