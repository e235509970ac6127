"""Position-decaying token weights of CFT (cft-method.md, section 2).

A title's first tokens depend on the user's history far more than its last ones, which the
first tokens already pin down. CFT therefore weights the n label tokens of an example linearly
from 1 (first token) down to beta (last token, usually EOS):

    w_t = 1 - (t - 1) * (1 - beta) / (n - 1),   t = 1..n      (w_1 = 1 when n = 1)

Non-label positions (prompt, padding) get weight 0.
"""

from __future__ import annotations

import torch


def token_weights(label_mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token CFT weights.

    Args:
        label_mask: BoolTensor[B, T], True where the token is a label (title, closing quote, EOS).
            Label positions need not be contiguous and padding may be on either side: tokens are
            numbered t = 1..n in the order they appear in the row.
        beta: weight of the last label token; beta = 1 gives uniform weights (plain SFT).

    Returns:
        FloatTensor[B, T] (float32): w_t at label positions, 0 elsewhere.
    """
    if label_mask.dtype != torch.bool:
        raise TypeError(f"label_mask must be a bool tensor, got {label_mask.dtype}")
    if label_mask.dim() != 2:
        raise ValueError(f"label_mask must be [B, T], got shape {tuple(label_mask.shape)}")
    mask = label_mask.to(torch.float32)
    t = torch.cumsum(mask, dim=1)  # 1..n at label positions   [B, T]
    n = mask.sum(dim=1, keepdim=True)  # label tokens per row    [B, 1]
    # (n - 1) is 0 for one-token rows; their single token has t - 1 = 0, so clamping the
    # denominator to 1 yields w = 1 exactly, as the formula's n = 1 case asks.
    w = 1.0 - (t - 1.0) * (1.0 - beta) / torch.clamp(n - 1.0, min=1.0)
    return w * mask
