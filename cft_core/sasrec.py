"""SASRec (Kang & McAuley, 2018): a small self-attentive sequential recommender, as a baseline.

It reads the same instruction records as the LLM (history item ids -> target item id) and ranks
the full catalogue, so the evaluator scores it with the same metrics:

    x_i = E[item_i] + P[i]                         item + learned position embedding, i = 1..L
    h   = L blocks of  x + Attn(LN(x)) (causal),  x + FFN(LN(x))
    s   = LN(h_L) . E^T                            a score for every item (shared embeddings)

Trained with full-softmax cross-entropy of the target over the catalogue (instead of the paper's
one sampled negative: with ~10^3 items the full softmax is cheap and a stronger baseline).
Histories are left-padded with item 0's slot reserved as padding (ids are shifted by one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SASRecSettings:
    """Defaults follow the paper's ML-1M setting, scaled to histories of <= 10 items."""

    max_len: int = 10  # history length (the records' max_history)
    dim: int = 64  # embedding width
    layers: int = 2  # self-attention blocks
    heads: int = 1
    dropout: float = 0.2
    epochs: int = 10  # passes over the train records
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0


class SASRec(nn.Module):
    def __init__(self, num_items: int, s: SASRecSettings):
        super().__init__()
        self.s = s
        self.items = nn.Embedding(num_items + 1, s.dim, padding_idx=0)  # 0 = padding
        self.positions = nn.Embedding(s.max_len, s.dim)
        block = nn.TransformerEncoderLayer(
            s.dim, s.heads, dim_feedforward=s.dim, dropout=s.dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, s.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(s.dim)
        self.drop = nn.Dropout(s.dropout)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """history: LongTensor[B, L] item ids + 1, left-padded with 0 -> scores [B, num_items]."""
        length = history.shape[1]
        x = self.items(history) * self.s.dim**0.5 + self.positions.weight[-length:]
        # As the original: padding positions are zero vectors and attention is causal only (a
        # key-padding mask would leave the leading padding rows with nothing to attend to).
        x = self.drop(x) * (history != 0).unsqueeze(-1)
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=history.device)
        h = self.blocks(x, mask=causal, is_causal=True)
        h = self.norm(h[:, -1])  # [B, D]: the state after the most recent item
        return h @ self.items.weight[1:].T


def encode_histories(histories: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """Item-id lists (oldest first) -> LongTensor[B, max_len] of ids + 1, left-padded with 0."""
    out = torch.zeros(len(histories), max_len, dtype=torch.long)
    for i, h in enumerate(histories):
        h = list(h)[-max_len:]
        if h:
            out[i, max_len - len(h) :] = torch.tensor(h, dtype=torch.long) + 1
    return out


def train_sasrec(
    histories: Sequence[Sequence[int]], targets: Sequence[int], num_items: int, s: SASRecSettings = SASRecSettings()
) -> SASRec:
    """Fit SASRec on (history, target) records; seeded, deterministic on CPU."""
    g = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)
    model = SASRec(num_items, s)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, betas=(0.9, 0.98))
    x = encode_histories(histories, s.max_len)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    model.train()
    for _ in range(s.epochs):
        for idx in torch.randperm(len(y), generator=g).split(s.batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def sasrec_rank(model: SASRec, histories: Sequence[Sequence[int]], k: int, batch_size: int = 1024) -> np.ndarray:
    """[B, k] item ids, best first, over the whole catalogue."""
    x = encode_histories(histories, model.s.max_len)
    k = min(k, model.items.num_embeddings - 1)
    return torch.cat([model(c).topk(k, dim=1).indices for c in x.split(batch_size)]).numpy()
