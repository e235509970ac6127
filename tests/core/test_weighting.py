"""token_weights: hand-computed rows and properties (cft-method.md, section 2)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cft_core.weighting import token_weights


def test_hand_computed_rows_any_padding_side():
    # Row 0: 4 labels, right padded; row 1: 3 labels, left padded; row 2: one label.
    mask = torch.tensor(
        [
            [0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1],
            [0, 0, 1, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    w = token_weights(mask, beta=0.25)
    # n = 4: 1 - (t-1) * 0.75 / 3 -> 1, 0.75, 0.5, 0.25 ; n = 3: 1, 0.625, 0.25 ; n = 1: 1
    expected = torch.tensor(
        [
            [0, 1.0, 0.75, 0.5, 0.25, 0, 0],
            [0, 0, 0, 0, 1.0, 0.625, 0.25],
            [0, 0, 1.0, 0, 0, 0, 0],
        ]
    )
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-7)


def test_beta_one_is_uniform():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    torch.testing.assert_close(token_weights(mask, 1.0), mask.float())


def test_rejects_non_bool_mask():
    with pytest.raises(TypeError, match="bool"):
        token_weights(torch.ones(2, 3), 0.5)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(st.booleans(), min_size=8, max_size=8), min_size=1, max_size=6),
    beta=st.floats(min_value=0.0, max_value=1.0),
)
def test_properties(rows, beta):
    mask = torch.tensor(rows, dtype=torch.bool)
    w = token_weights(mask, beta)
    assert torch.all(w[~mask] == 0), "zero outside labels"
    for r in range(mask.shape[0]):
        vals = w[r][mask[r]]
        if vals.numel() == 0:
            continue
        assert vals[0].item() == pytest.approx(1.0), "first label weight is 1"
        if vals.numel() > 1:
            assert vals[-1].item() == pytest.approx(beta, abs=1e-6), "last label weight is beta"
            diffs = vals[1:] - vals[:-1]
            assert torch.all(diffs <= 1e-7), "monotone non-increasing"
            # linear: equal steps of (1 - beta) / (n - 1)
            torch.testing.assert_close(diffs, torch.full_like(diffs, diffs[0].item()), atol=1e-6, rtol=0)
