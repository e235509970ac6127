"""BIGRec L2 grounding: map generated titles to catalogue items (cft-method.md, section 3).

Every catalogue title and every generated title is embedded by the fine-tuned model's last
layer at the last token; catalogue items are ranked by L2 distance to a generated title.

- original: rank by beam 1 only.
- adjusted (the CFT code's default): rank per beam, interleave the beams' rankings round-robin
  (beam 1 rank 1, beam 2 rank 1, ..., beam 1 rank 2, ...), drop repeated items keeping the first
  occurrence, keep the top K.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from cft_core.modeling import position_ids_from_mask


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """FloatTensor[N, D]: last-layer hidden state at the last token of each text (no BOS/EOS
    added beyond what the tokenizer adds to plain text; right padding). progress: a bar, on a
    terminal only."""
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    encoded = [r if r else [pad_id] for r in encoded]  # an empty generation still gets a vector
    # Batch texts of similar length together (longest first), so batches carry little padding;
    # the result is put back in the input order.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding", disable=None if progress else True, unit="batch"):
        rows = [encoded[i] for i in order[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(device), mask.to(device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                    output_hidden_states=True, logits_to_keep=1)
        last = mask.sum(dim=1) - 1
        chunks.append(out.hidden_states[-1][torch.arange(len(rows), device=device), last].float().cpu())
    if not chunks:
        return torch.empty(0, 0)
    sorted_emb = torch.cat(chunks)
    emb = torch.empty_like(sorted_emb)
    emb[torch.tensor(order)] = sorted_emb
    return emb


def l2_topk(queries: torch.Tensor, items: torch.Tensor, k: int, chunk: int = 4096,
            excluded: Sequence[Sequence[int]] | None = None, max_distances: int = 1 << 26) -> torch.Tensor:
    """LongTensor[Q, k]: indices of the k items nearest (L2) to each query, nearest first.

    queries [Q, D], items [I, D]. ||q - x||^2 = ||q||^2 - 2 q.x + ||x||^2; ||q||^2 does not change
    a query's order, so one matrix product per chunk of queries ranks the whole catalogue.
    chunk: queries per product, fewer where a chunk's [chunk, I] distances would exceed
    `max_distances` entries (2^26: 256 MB in fp32; a catalogue of a million items takes 67 queries
    at a time instead of 4,096, which would need 16 GB).
    excluded: per query, item indices never returned (their slots at the end become -1).
    """
    k = min(k, items.shape[0])
    chunk = max(1, min(chunk, max_distances // max(1, items.shape[0])))
    sq = (items * items).sum(dim=1)
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk]
        dist = torch.addmm(sq[None, :], q, items.T, alpha=-2.0)  # ||x||^2 - 2 q.x in one pass
        if excluded is not None:
            for r, rows in enumerate(excluded[start : start + chunk]):
                dist[r, list(rows)] = float("inf")
        top = torch.topk(dist, k, dim=1, largest=False, sorted=True)
        out.append(top.indices.masked_fill(torch.isinf(top.values), -1))
    return torch.cat(out)


def interleave_dedup(per_beam: np.ndarray, k: int) -> np.ndarray:
    """Adjusted grounding. per_beam: [B, beams, L] item rankings -> [B, k] (-1 pads short rows).

    Round-robin over beams (rank-major), first occurrence of each item kept, first k kept.
    """
    b, beams, length = per_beam.shape
    merged = per_beam.transpose(0, 2, 1).reshape(b, beams * length)  # beam1 r1, beam2 r1, ...
    order = np.argsort(merged, axis=1, kind="stable")
    sorted_vals = np.take_along_axis(merged, order, axis=1)
    first_sorted = np.ones_like(sorted_vals, dtype=bool)
    first_sorted[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    keep = np.zeros_like(first_sorted)
    np.put_along_axis(keep, order, first_sorted, axis=1)  # back to merged positions
    # Stable partition: kept positions first, in their merged order.
    pos = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(merged, pos, axis=1)
    counts = keep.sum(axis=1)
    out[np.arange(k)[None, :] >= counts[:, None]] = -1
    return out
