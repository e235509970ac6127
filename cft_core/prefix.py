"""The tokens a batch of prompts starts with, run once (generation, diagnostics and training).

Every factual prompt begins with the same ~70 tokens (preamble, instruction, the history's
introduction: `cft_core.prompts`), about a third to a half of a prompt; every counterfactual
prompt is the same text. A causal LM's keys and values at a position depend only on the tokens up
to it, so those of a common start can be computed once (batch of 1), repeated to the batch, and
the forward pass continued from there on each row's own tokens. Same result as running each row
whole, up to float rounding, and in training the same gradients: the repeat's backward sums the
rows' contributions to the shared start (tests/core/test_generation.py, test_diagnostics.py and
test_loss.py, the last against the reference loss).

Layout: the common start in the first columns, each row's own tokens right-aligned after it,
padding between (`layout_prompts`); position ids count real tokens, so every token keeps the
position it has when its row runs alone. A sliding attention window counts columns, not
positions: the padding between would move tokens out of a window, so a model with one shorter
than the rows runs them whole (`can_share_prefix`). Caches keep every position, windowed layers
included (a window's own cache drops the oldest), and the layers' masks apply the window. A model
with recurrent layers (Mamba, gated delta-nets, short convolutions) runs every row whole too: its
state is not keys and values that could be handed to the rows, and padding between would run
through it (its layers zero the padding's inputs, so ordinary left or right padding is exact).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicCache

from cft_core.modeling import (
    IGNORE_INDEX,
    attention_window,
    model_device,
    position_ids_from_mask,
    recurrent_layer_types,
)

KeysValues = list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: (keys, values) [B, H, T, D]


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Number of leading tokens that every row has in common."""
    shortest = min(len(r) for r in rows)
    for i in range(shortest):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return shortest


def layout_prompts(rows: Sequence[Sequence[int]], pad_id: int, shared: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, T] of token rows: their first `shared` tokens (the same in
    every row) in columns [0, shared), then each row's remaining tokens right-aligned, with the
    padding between. With shared = 0 this is plain left padding. Every row ends at the last
    column (where generation starts, and where labels sit)."""
    width = shared + max(len(r) - shared for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :shared], ids[i, width - len(r) + shared :] = torch.tensor(r[:shared]), torch.tensor(r[shared:])
        mask[i, :shared], mask[i, width - len(r) + shared :] = 1, 1
    return ids, mask


class PromptPrefixCache:
    """Keys and values of a token prefix, kept for the batches that start with it.

    The first lookup stores its prefix; a later one reuses the part it shares with the stored
    tokens (a prefix of the stored tokens is a prefix of the stored cache). The stored tokens
    change only when a lookup shares none of them (another prompt template) or the model moved to
    another device.

    One cache belongs to one model whose weights do not change (a `Ranker`, whose batches come
    from one thread; one `label_likelihoods` call); it is not safe to share between threads.
    Under gradient mode (training) use a fresh cache per step: its tensors then carry the graph.
    """

    def __init__(self):
        self.tokens: list[int] = []
        self.layers: KeysValues = []  # [1, H, len(tokens), D] per layer

    def lookup(self, model, prefix: Sequence[int]) -> tuple[int, KeysValues]:
        """(m, per layer (keys, values) [1, H, m, D]) of the first m tokens of `prefix`; m > 0
        whenever `prefix` is not empty."""
        device = model_device(model)
        shared = common_prefix_length([self.tokens, list(prefix)]) if self.tokens else 0
        if shared == 0 or self.layers[0][0].device != device:
            if not prefix:
                return 0, []
            out = model(input_ids=torch.tensor([list(prefix)], device=device), past_key_values=DynamicCache(),
                        use_cache=True, logits_to_keep=1)  # a cache of every position (module docstring)
            self.tokens = list(prefix)
            self.layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            shared = len(prefix)
        return shared, [(k[:, :, :shared], v[:, :, :shared]) for k, v in self.layers]


def can_share_prefix(model, width: int) -> bool:
    """Whether rows `width` columns wide (what the pass will have seen at its end) may hold padding
    between their shared start and their own tokens, and a prefix's keys and values be reused:
    yes unless the model has a sliding attention window shorter than that (module docstring), or
    layers that keep a recurrent state (Mamba, gated delta-nets, short convolutions: a state is
    not keys and values, and padding inside a row would run through it). Gemma-2's and Mistral's
    4,096 are far longer than a prompt (~100-300 tokens); Gemma-3's 512 can bite on long
    histories. Where it says no the rows run whole, which is slower, not different."""
    if recurrent_layer_types(model):
        return False
    window = attention_window(model)
    return window is None or width <= window


def fresh_cache(model) -> DynamicCache | None:
    """A cache that keeps every position (a windowed layer's own cache drops the oldest), or None
    for a model with recurrent layers, which builds the cache of its own kinds of layers."""
    return None if recurrent_layer_types(model) else DynamicCache()


def real_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
    """Real (unpadded) tokens and labels of each row of [B, T], whatever the padding side:
    [(ids [n], labels [n])] per row."""
    keep = attention_mask.bool()
    return [(ids[m], lab[m]) for ids, lab, m in zip(input_ids, labels, keep, strict=True)]


def shared_prefix_length(rows: list[tuple[torch.Tensor, torch.Tensor]], before_label: int = 0) -> int:
    """Length of the longest common token prefix of the rows (`real_rows`) that carries no label
    and ends at least `before_label` tokens before the earliest label. Packing (`cft_core.packing`)
    takes 0: the prefix's last token predicts every row's first label once. A reused key/value
    cache (`layout_labelled`) takes 1: the state predicting a label must be computed per row."""
    limit = min(
        int((lab != IGNORE_INDEX).nonzero()[0]) if (lab != IGNORE_INDEX).any() else len(ids)
        for ids, lab in rows
    ) - before_label
    return common_prefix_length([ids[:limit].tolist() for ids, _ in rows]) if limit > 0 else 0


def layout_labelled(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                    share: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Re-lay padded rows [B, T] (any padding side) whose labels end each row: the rows' common
    start first (`shared_prefix_length` with one token left before the earliest label), each row's
    rest right-aligned. Returns input_ids, attention_mask and labels [B, T'] (padding: token 0,
    label IGNORE_INDEX) and the shared length; with nothing shared (or share=False) the tensors as
    they came and 0."""
    rows = real_rows(input_ids.cpu(), attention_mask.cpu(), labels.cpu())
    shared = shared_prefix_length(rows, before_label=1) if share else 0
    if shared == 0:  # nothing to share: the rows as they came
        return input_ids, attention_mask, labels, 0
    ids, mask = layout_prompts([r.tolist() for r, _ in rows], 0, shared)
    laid_labels, _ = layout_prompts([lab.tolist() for _, lab in rows], IGNORE_INDEX, shared)
    device = input_ids.device
    return ids.to(device), mask.to(device), laid_labels.to(device), shared


def forward_after_prefix(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, shared: int,
                         prefix_cache: PromptPrefixCache | None = None, **model_kwargs):
    """Forward pass of rows [B, T] laid out by `layout_prompts` whose first `shared` columns are
    the same tokens in every row: those run once (batch of 1), or not at all when `prefix_cache`
    holds them. Runs under the caller's grad mode: with gradients, those of the shared start are
    summed over the rows (`expand`'s backward), as if each row had run it.

    model_kwargs go to the model call (default use_cache=True, logits_to_keep=1). Returns
    (cache, out): the cache of all T columns (when the call kept one) and the model output of the
    columns after the prefix (None when the prefix was all of T)."""
    rows = len(input_ids)
    start, prefix = (prefix_cache or PromptPrefixCache()).lookup(model, input_ids[0, :shared].tolist())
    past = DynamicCache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix]) if start else None
    if past is None and model_kwargs.get("use_cache", True):
        past = fresh_cache(model)
    if start == input_ids.shape[1]:
        return past, None
    out = model(
        input_ids=input_ids[:, start:],
        attention_mask=attention_mask,  # the prefix's columns included
        position_ids=position_ids_from_mask(attention_mask)[:, start:],
        past_key_values=past,
        **{"use_cache": True, "logits_to_keep": 1, **model_kwargs},
    )
    cache = getattr(out, "past_key_values", None)  # Mamba's output has none (its state is elsewhere)
    return (cache if cache is not None else past), out
