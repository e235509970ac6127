"""A straightforward CFT loss, written from the equations: the yardstick for the fast kernels.

It does what the reference implementation does: two full forward passes, full-vocabulary
logits at every position, shift by one, then loops over examples and label tokens. The tests
check `cft_core.loss.compute_cft_loss` against it (values and gradients); the benchmarks time it
as the "naive" step. Do not use it to train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cft_core.loss import CFTLossOutput
from cft_core.modeling import IGNORE_INDEX, position_ids_from_mask


def _full_logits(model, input_ids, attention_mask) -> torch.Tensor:
    """[B, T, V] logits at every position (what the reference builds, twice)."""
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).logits


def reference_cft_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    alpha: float,
    beta: float,
    normalizer: float | None = None,
    weight_causal_only: bool = False,
    token_normalizer: float | None = None,
) -> CFTLossOutput:
    """L = L_n + alpha * L_c computed token by token (cft-method.md, section 2)."""
    logits_f = _full_logits(model, batch["input_ids"], batch["attention_mask"]).float()
    logits_c = _full_logits(model, batch["cf_input_ids"], batch["cf_attention_mask"]).float()
    sum_wn = sum_wc = sum_n = 0.0
    total_w, n_tokens = 0.0, 0
    for b in range(logits_f.shape[0]):
        # Shift by one: the logits at position t - 1 predict the token at position t.
        pos_f = [t for t in range(1, batch["labels"].shape[1]) if batch["labels"][b, t] != IGNORE_INDEX]
        pos_c = [t for t in range(1, batch["cf_labels"].shape[1]) if batch["cf_labels"][b, t] != IGNORE_INDEX]
        n = len(pos_f)
        assert n == len(pos_c), "halves must carry the same number of label tokens"
        for i, (tf, tc) in enumerate(zip(pos_f, pos_c, strict=True)):
            y = int(batch["labels"][b, tf])
            assert y == int(batch["cf_labels"][b, tc])
            w = 1.0 if n == 1 else 1.0 - i * (1.0 - beta) / (n - 1)  # t = i + 1
            z_f = logits_f[b, tf - 1]
            z_c = logits_c[b, tc - 1]
            ce_normal = -F.log_softmax(z_f, dim=-1)[y]
            ce_causal = -F.log_softmax(z_f - z_c, dim=-1)[y]
            sum_wn = sum_wn + w * ce_normal
            sum_n = sum_n + ce_normal
            sum_wc = sum_wc + w * ce_causal
            total_w += w
            n_tokens += 1
    z = total_w if normalizer is None else float(normalizer)
    if weight_causal_only:
        normal = sum_n / (n_tokens if token_normalizer is None else float(token_normalizer))
    else:
        normal = sum_wn / z
    causal = sum_wc / z
    return CFTLossOutput(normal + alpha * causal, normal, causal, torch.tensor(total_w), n_tokens)


def pad_counterfactual_to_factual(batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """The reference's layout: the counterfactual half right-padded to the factual length."""
    out = dict(batch)
    t_f = batch["input_ids"].shape[1]
    for key, value in (("cf_input_ids", pad_id), ("cf_attention_mask", 0), ("cf_labels", IGNORE_INDEX)):
        extra = t_f - batch[key].shape[1]
        out[key] = F.pad(batch[key], (0, extra), value=value)
    return out


def naive_cft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], alpha: float, beta: float) -> CFTLossOutput:
    """The reference implementation's step, vectorised: two full forward passes building
    [B, T, V] logits each, shift by one, CE over every position, then mask and weight.

    This is the "naive" baseline of the benchmarks (pass a batch from
    `pad_counterfactual_to_factual` to reproduce its padding too).
    """
    from cft_core.weighting import token_weights

    logits_f = _full_logits(model, batch["input_ids"], batch["attention_mask"])[:, :-1].float()
    logits_c = _full_logits(model, batch["cf_input_ids"], batch["cf_attention_mask"])[:, :-1].float()
    labels_f, labels_c = batch["labels"][:, 1:], batch["cf_labels"][:, 1:]
    mask_f, mask_c = labels_f != IGNORE_INDEX, labels_c != IGNORE_INDEX
    w = token_weights(mask_f, beta)[mask_f]
    # CE at every position of both halves, as the reference computes it.
    ce_f = F.cross_entropy(logits_f.transpose(1, 2), labels_f.clamp(min=0), reduction="none")[mask_f]
    effect = logits_f[mask_f] - logits_c[mask_c]
    ce_e = F.cross_entropy(effect, labels_f[mask_f], reduction="none")
    normal = (w * ce_f).sum() / w.sum()
    causal = (w * ce_e).sum() / w.sum()
    return CFTLossOutput(normal + alpha * causal, normal, causal, w.sum().detach(), int(w.numel()))
