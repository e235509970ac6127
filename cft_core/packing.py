"""Shared-prompt packing: run a prompt that every row of a batch shares only once.

The counterfactual prompt has no history, so it is the same token sequence for every example of
a domain; only the response (title, closing quote, EOS) differs. Padded, a counterfactual half
of B rows costs B x (P + L) tokens (P ~ 50 prompt tokens, L ~ 15 response tokens). Packed, the
prompt appears once and each response follows it, attending to the prompt and to itself only::

    row:       p_0 ... p_{P-1} | a_0 a_1 a_2 | b_0 b_1 | ...
    positions: 0   ... P-1     | P   P+1 P+2 | P   P+1 | ...
    a_j sees   p_*  and a_0..a_j;   b_j sees p_* and b_0..b_j (never a_*)

so each response sees exactly the keys and positions it has in its padded row, and the hidden
states (hence the logits, the loss and every gradient) are those of the padded layout, at
P + sum(L) tokens instead of B x (P + L). The token predicting a response's first label is
the prompt's last token, shared by all responses. Rows are packed `rows_per_pack` at a time to
keep the dense [T, T] attention mask small; packs are right-padded to the longest one.

The shared part is the longest common prefix of the rows that holds no label token, so any
half whose rows start alike benefits; with no common prefix `pack_shared_prefix` returns None
and callers use the padded layout. A custom 4-D mask needs the eager or SDPA attention kernels
(not flash-attention 2), see `supports_packing`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cft_core.modeling import IGNORE_INDEX
from cft_core.prefix import real_rows, shared_prefix_length


class PackedHalf(NamedTuple):
    """One half of a batch with its shared prefix stored once per pack.

    input_ids, position_ids: LongTensor[G, T]  (G packs of up to `rows_per_pack` rows)
    attention_mask: BoolTensor[G, 1, T, T]     (True = query may attend to key)
    predictors: LongTensor[N, 2]               (pack, position) of the state predicting each label
    targets: LongTensor[N]                     label tokens, in the row-major order of the padded half
    num_tokens: int                            real (non-padding) tokens over all packs
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    predictors: torch.Tensor
    targets: torch.Tensor
    num_tokens: int


def pack_shared_prefix(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    rows_per_pack: int = 16,
    pad_id: int = 0,
) -> PackedHalf | None:
    """Pack a padded half [B, T] (input_ids, attention_mask, labels) around its shared prefix.

    Returns None when the rows share no prefix (nothing to save). Labels must all lie after the
    prefix (guaranteed by construction of `shared_prefix_length`).
    """
    rows = real_rows(input_ids.cpu(), attention_mask.cpu(), labels.cpu())
    p = shared_prefix_length(rows)
    if p == 0:
        return None
    prefix = rows[0][0][:p]
    packs_ids, packs_pos, packs_seg, predictors, targets = [], [], [], [], []
    for g, start in enumerate(range(0, len(rows), rows_per_pack)):
        ids, pos, seg = [prefix], [torch.arange(p)], [torch.zeros(p, dtype=torch.long)]
        offset = p
        for r, (row_ids, row_lab) in enumerate(rows[start : start + rows_per_pack], start=1):
            suffix, suffix_lab = row_ids[p:], row_lab[p:]
            n = len(suffix)
            if n == 0:  # the row is all prefix and so carries no label
                continue
            ids.append(suffix)
            pos.append(p + torch.arange(n))
            seg.append(torch.full((n,), r, dtype=torch.long))
            # Token j of the suffix is predicted by the state before it: the prefix's last
            # token for j = 0, else suffix token j - 1 (at offset + j - 1 in the pack).
            before = torch.cat([torch.tensor([p - 1]), offset + torch.arange(n - 1)])
            is_label = suffix_lab != IGNORE_INDEX
            predictors.append(torch.stack([torch.full((n,), g), before], dim=1)[is_label])
            targets.append(suffix_lab[is_label])
            offset += n
        packs_ids.append(torch.cat(ids))
        packs_pos.append(torch.cat(pos))
        packs_seg.append(torch.cat(seg))

    t = max(len(x) for x in packs_ids)
    g = len(packs_ids)
    out_ids = torch.full((g, t), pad_id, dtype=torch.long)
    out_pos = torch.zeros((g, t), dtype=torch.long)
    seg = torch.full((g, t), -1, dtype=torch.long)  # -1 = padding
    for i, (x, q, s) in enumerate(zip(packs_ids, packs_pos, packs_seg, strict=True)):
        out_ids[i, : len(x)], out_pos[i, : len(q)], seg[i, : len(s)] = x, q, s
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # key index <= query index
    q_seg, k_seg = seg[:, :, None], seg[:, None, :]  # [G, T, 1], [G, 1, T]
    mask = causal & (q_seg != -1) & (k_seg != -1) & ((k_seg == 0) | (k_seg == q_seg))
    # Padding queries attend to themselves only: a row with no allowed key would make softmax
    # 0/0 = NaN, and NaN times a zero gradient is still NaN in the backward pass.
    mask |= torch.eye(t, dtype=torch.bool) & (seg == -1)[:, :, None]
    dev = input_ids.device
    return PackedHalf(
        out_ids.to(dev), out_pos.to(dev), mask[:, None].to(dev),
        torch.cat(predictors).to(dev), torch.cat(targets).to(dev), int((seg != -1).sum()),
    )


def _attention_kernel(model: torch.nn.Module) -> str | None:
    inner = getattr(model, "module", model)  # DeepSpeed engine; peft forwards .config
    return getattr(getattr(inner, "config", None), "_attn_implementation", None)


def supports_packing(model: torch.nn.Module) -> bool:
    """Whether the model's attention kernel takes a custom 4-D mask (eager, SDPA)."""
    return _attention_kernel(model) in ("eager", "sdpa")


def model_attention_mask(model: torch.nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """The 4-D mask in the form the model's kernel takes: SDPA a bool mask (True = attend), eager
    an additive float mask (0 or the most negative number), as transformers builds them itself."""
    if _attention_kernel(model) == "sdpa":
        return mask
    dtype = next(getattr(model, "module", model).parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
