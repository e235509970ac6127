"""Teacher-forced diagnostics (cft-method.md, section 6): two forward passes per row, no
generation, far less variance than HR/NDCG, so they run on every evaluated row.

For a row with history prompt x_h, counterfactual (no-history) prompt x_0 and label tokens
y_1..y_T (the target title, closing quote, EOS: exactly the tokens training predicts):

    log p(y | x)    = sum_t log p(y_t | x, y_<t)
    history effect  = log p(y | x_h) - log p(y | x_0)     per title; divided by T: per token
    target NLL      = -log p(y | x_h) / T                 per label token (lower is better)

The counterfactual prompt is the same for every row and the factual prompts share their first
~70 tokens: those run once per call (`cft_core.prefix`), so the counterfactual pass costs about the
label tokens alone.

CFT's causal term is built to raise the history effect; SFT only raises log p(y | x_h). Rows are
summarised by their mean with a percentile-bootstrap interval (`cft_core.metrics`), and two runs
are compared row by row (`cft compare`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cft_core.collate import PairedCollator
from cft_core.modeling import IGNORE_INDEX
from cft_core.prefix import (
    PromptPrefixCache,
    can_share_prefix,
    forward_after_prefix,
    layout_labelled,
)


@dataclass(frozen=True)
class LabelLikelihoods:
    """Per row (arrays [N]): log p(y | x_h), log p(y | x_0) and T, the number of label tokens."""

    factual: np.ndarray
    counterfactual: np.ndarray
    tokens: np.ndarray

    @property
    def history_effect(self) -> np.ndarray:
        """[N] log p(y | x_h) - log p(y | x_0), per title."""
        return self.factual - self.counterfactual

    @property
    def history_effect_per_token(self) -> np.ndarray:
        return self.history_effect / self.tokens

    @property
    def target_nll(self) -> np.ndarray:
        """[N] -log p(y | x_h) per label token."""
        return -self.factual / self.tokens


@torch.no_grad()
def _label_log_probs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                     prefix_cache: PromptPrefixCache, share_prefix: bool = True) -> torch.Tensor:
    """Padded rows [B, T] whose labels sit at the end of each row -> [B] summed log-probabilities
    of the labels.

    The tokens every row starts with run once (`cft_core.prefix`): the instruction part of the
    factual prompts, and all of the counterfactual prompt but its last token, which is the same
    for every row. Only the last positions go through the LM head (a 49k vocabulary makes the full
    [B, T, V] logits the largest tensor of the pass)."""
    share_prefix = share_prefix and can_share_prefix(model, input_ids.shape[1])
    ids, mask, labels, shared = layout_labelled(input_ids, attention_mask, labels, share_prefix)
    keep = int((labels != IGNORE_INDEX).sum(dim=1).max()) + 1  # the label positions and the one before
    logits = forward_after_prefix(model, ids, mask, shared, prefix_cache, logits_to_keep=keep)[1].logits
    targets = labels[:, -keep + 1 :]  # position j is predicted by the logits at j - 1
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [B, keep - 1]
    return (picked * (targets != IGNORE_INDEX)).sum(dim=1)


@torch.no_grad()
def label_likelihoods(model, tokenizer, prompts, records: Sequence[Mapping], batch_size: int,
                      cutoff_len: int = 1024, share_prefix: bool = True) -> LabelLikelihoods:
    """`LabelLikelihoods` of `records` (each with `history_titles` and `target_title`), built by
    the training collator so the labels are exactly the trained ones. `share_prefix=False`: every
    row runs its whole prompt (for comparisons)."""
    model.eval()
    collator = PairedCollator(tokenizer, prompts, cutoff_len=cutoff_len, padding_side="left")
    device = next(model.parameters()).device
    factual, counterfactual, tokens = [], [], []
    factual_start, counterfactual_prompt = PromptPrefixCache(), PromptPrefixCache()  # computed once per call
    for start in range(0, len(records), batch_size):
        batch = {k: v.to(device) for k, v in collator(records[start : start + batch_size]).items()}
        factual.append(_label_log_probs(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                        factual_start, share_prefix))
        counterfactual.append(_label_log_probs(model, batch["cf_input_ids"], batch["cf_attention_mask"],
                                               batch["cf_labels"], counterfactual_prompt, share_prefix))
        tokens.append((batch["labels"] != IGNORE_INDEX).sum(dim=1))
    as_numpy = lambda parts: torch.cat(parts).double().cpu().numpy()  # noqa: E731
    return LabelLikelihoods(as_numpy(factual), as_numpy(counterfactual), as_numpy(tokens))
