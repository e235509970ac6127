"""The CFT objective (cft-method.md, section 2), as a kernel and as a model-level step.

For every label token t of an example, with z^f_t / z^c_t the logits given the factual prompt
(with the history) and the counterfactual prompt (history removed), and w_t the token weight:

    normal  L_n = sum_t w_t CE(z^f_t, y_t)         / Z
    causal  L_c = sum_t w_t CE(z^f_t - z^c_t, y_t) / Z      (fit the label with the effect)
    loss    L   = L_n + alpha * L_c

Z is the total weight of the batch, or of the whole gradient-accumulation window when the caller
passes it as `normalizer` (then micro-batch 4 x accumulation 1 and 1 x 4 give equal gradients).
Gradients flow through both halves. alpha = 0 and beta = 1 is plain SFT (BIGRec); alpha = 0 and
beta < 1 is token weighting alone ("+Pos").

`compute_cft_loss` is what a trainer calls. Unlike the reference implementation it never builds
[B, T, V] logits: it runs the backbone on each half, gathers the final hidden states at the
label positions only, and applies the LM head once to those N rows of both halves. With a
vocabulary of 49k and N ~ 10 labels per example that is the difference between ~10^8 and ~10^6
logits per batch. The counterfactual prompt is the same for every row, so it runs once per pack
of rows, each response attending to it (`cft_core.packing`): the counterfactual pass costs about
P + B x L tokens instead of B x (P + L) (P ~ 50 prompt, L ~ 15 response tokens).

Applying the head itself assumes the model's logits are head(final hidden state), or a known
function of it: Gemma-2's soft-capping, Granite's and Cohere's scaling are applied after the head
as those models do (`cft_core.modeling.output_logits`). `check_model_supported` verifies that
on one forward pass, and the trainer runs it on its first batch, so a model that transforms its
logits in another way is refused rather than trained on other logits than it predicts with.
Models with recurrent layers (Mamba, Falcon-H1, LFM2, Granite-4.0-H, Qwen3-Next / Qwen3.5) run
every row whole, both halves padded: a recurrent state is not keys and values that could be
reused, and padding inside a row would run through it (`cft_core.prefix.can_share_prefix`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from cft_core.modeling import (
    IGNORE_INDEX,
    PADDING_CHANGES_OUTPUTS,
    POST_HEAD_TRANSFORMS,
    model_type,
    output_logits,
    position_ids_from_mask,
)
from cft_core.packing import (
    PackedHalf,
    model_attention_mask,
    pack_shared_prefix,
    supports_packing,
)
from cft_core.prefix import can_share_prefix, forward_after_prefix, layout_labelled
from cft_core.weighting import token_weights


class UnsupportedModelError(ValueError):
    """A model this kernel cannot train (see `check_model_supported`); the user's choice, so
    reported without a traceback (schemas.errors.UserError)."""

    user_error = True


@torch.no_grad()
def check_model_supported(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          rtol: float = 0.05) -> None:
    """Raise UnsupportedModelError unless the model's logits are what `compute_cft_loss` computes
    from its final hidden state: `output_logits(model)` (the head, then the post-head transform
    of the model types that have a known one), from hidden states of one row per token; and
    unless padding leaves a row's outputs as they are alone (PADDING_CHANGES_OUTPUTS, by type).

    input_ids, attention_mask: [B, T], e.g. a first training batch. One forward pass keeping the
    last position's logits [B, V], compared with `output_logits` applied to that position's hidden
    state. rtol: allowed gap relative to the largest logit of either; bf16 kernels differ by well
    under 1 %, while a transform left out changes logits by a factor (scaling) or caps them (a cap
    far above every logit changes nothing and passes)."""
    name = f"model type {model_type(model) or '?'!r}"
    if (why := PADDING_CHANGES_OUTPUTS.get(model_type(model))) is not None:
        raise UnsupportedModelError(f"{name} gives other outputs for a row in a padded batch than for the row "
                                    f"alone: {why}")
    training = model.training
    model.eval()  # no dropout: a training run draws the same random numbers with or without the check
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask),
                    output_hidden_states=True, use_cache=False, logits_to_keep=1)
        last_hidden = out.hidden_states[-1]  # [B, T, D] after the final norm, as the step reads it
        if last_hidden.dim() != 3 or last_hidden.shape[:2] != input_ids.shape:  # Gemma-3n: [streams, B, T, D]
            raise UnsupportedModelError(
                f"{name} has a last hidden state of shape {tuple(last_hidden.shape)}, not [batch, tokens, width] "
                f"({tuple(input_ids.shape)} tokens here): the CFT loss reads the final hidden state of each "
                "label token from there")
        expected = out.logits[:, -1].float()
        ours = output_logits(model)(last_hidden[:, -1]).float()
    finally:
        model.train(training)
    gap = (ours - expected).abs().max().item()
    largest = max(expected.abs().max().item(), ours.abs().max().item())
    if not gap <= rtol * largest + 1e-6:  # also catches NaN
        raise UnsupportedModelError(
            f"{name} computes its logits from the final hidden state "
            f"in a way the CFT loss does not reproduce (largest gap {gap:.3g} on logits up to {largest:.3g}). "
            "The loss applies the output head itself (plus the known transforms of "
            f"{', '.join(sorted(POST_HEAD_TRANSFORMS))}), so it would train other logits than the model "
            "predicts with: use a model whose logits are head(hidden) (Llama, SmolLM2, Qwen2/2.5/3, Mistral, "
            "Phi-3) or one of those types")


class CFTLossOutput(NamedTuple):
    """Scalars of one CFT step; `loss` carries the gradient, the rest are for logging."""

    loss: torch.Tensor  # L_n + alpha * L_c
    normal: torch.Tensor  # L_n
    causal: torch.Tensor  # L_c (0 when no counterfactual logits were given)
    weight_sum: torch.Tensor  # sum of the weights of this batch (not the normaliser)
    num_tokens: int  # N, label tokens in this batch


def _as_scalar(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def cft_loss(
    factual_logits: torch.Tensor,
    counterfactual_logits: torch.Tensor | None,
    labels: torch.Tensor,
    weights: torch.Tensor,
    alpha: float,
    normalizer: float | torch.Tensor | None = None,
    *,
    weight_causal_only: bool = False,
    token_normalizer: float | torch.Tensor | None = None,
) -> CFTLossOutput:
    """CFT loss over the N label positions of a batch.

    Args:
        factual_logits: [N, V] logits predicting each label token, given the factual prompt
            (already shifted: row i predicts labels[i]).
        counterfactual_logits: [N, V] the same rows given the counterfactual prompt, or None.
        labels: LongTensor[N] label token ids.
        weights: FloatTensor[N] token weights w_t (see `cft_core.weighting.token_weights`).
        alpha: weight of the causal term. With alpha = 0 the causal term is still reported
            (without gradient) when counterfactual logits are given.
        normalizer: Z; default sum(weights). Pass the accumulation window's total weight to make
            the gradient independent of how the window is split into micro-batches.
        weight_causal_only: the paper's reading: weights on the causal term only, the normal
            term a plain mean CE. Default False, as the reference code weights both terms.
        token_normalizer: with `weight_causal_only`, the normaliser of the unweighted normal
            term (default N; pass the window's label-token count under accumulation).

    Returns:
        CFTLossOutput with scalar (0-dim, float32) tensors.
    """
    if factual_logits.dim() != 2 or labels.dim() != 1 or weights.dim() != 1:
        raise ValueError(
            "expected factual_logits [N, V], labels [N], weights [N]; got "
            f"{tuple(factual_logits.shape)}, {tuple(labels.shape)}, {tuple(weights.shape)}"
        )
    # Cross-entropy in fp32 whatever the model's dtype: N x V is small, stability is not free.
    z_f = factual_logits.float()
    w = weights.float()
    # Clamping keeps an all-padding batch at loss 0 (with a graph) instead of 0/0 = nan.
    z = w.sum().clamp_min(1e-12) if normalizer is None else _as_scalar(normalizer, w)

    ce_f = F.cross_entropy(z_f, labels, reduction="none")  # [N]
    if weight_causal_only:
        z_tok = labels.numel() if token_normalizer is None else token_normalizer
        normal = ce_f.sum() / max(_as_scalar(z_tok, w), _as_scalar(1.0, w))
    else:
        normal = (w * ce_f).sum() / z

    if counterfactual_logits is None:
        causal = torch.zeros((), dtype=torch.float32, device=z_f.device)
        loss = normal
    else:
        if counterfactual_logits.shape != factual_logits.shape:
            raise ValueError(
                f"counterfactual logits {tuple(counterfactual_logits.shape)} do not match "
                f"factual logits {tuple(factual_logits.shape)}"
            )
        effect = z_f - counterfactual_logits.float()  # z^e = z^f - z^c    [N, V]
        causal = (w * F.cross_entropy(effect, labels, reduction="none")).sum() / z
        if alpha == 0:
            causal = causal.detach()
            loss = normal
        else:
            loss = normal + alpha * causal
    return CFTLossOutput(loss, normal, causal, w.sum().detach(), int(labels.numel()))


def label_hidden_states(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    share_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final hidden states at the positions that predict a label token.

    Args:
        model: a Hugging Face causal LM (possibly wrapped by peft or a DeepSpeed engine).
        input_ids, attention_mask, labels: [B, T]; labels are IGNORE_INDEX off the response.
        share_prefix: run the tokens every row starts with once, its keys and values repeated
            to the rows (`cft_core.prefix`; the same states, and the same gradients: the
            repeat's backward sums the rows' contributions).

    Returns:
        hidden [N, D] (row i predicts target i), targets LongTensor[N], and the
        BoolTensor[B, T'-1] mask of predicting positions (row-major order of the N rows; T' is
        T, or the columns after the shared start).
    """
    ids, mask, labels, shared = layout_labelled(input_ids, attention_mask, labels, share_prefix)
    # The model would otherwise build [B, T, V] logits; keep one position (the minimum).
    _, out = forward_after_prefix(model, ids, mask, shared, output_hidden_states=True, use_cache=False)
    labels = labels[:, shared:]  # the columns the pass ran (the shared start holds no label)
    hidden = out.hidden_states[-1]  # [B, T', D], after the final norm
    predicts_label = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    return hidden[:, :-1][predicts_label], labels[:, 1:][predicts_label], predicts_label


def packed_label_hidden_states(model: torch.nn.Module, packed: PackedHalf) -> torch.Tensor:
    """Final hidden states [N, D] at the label-predicting positions of a packed half
    (`cft_core.packing`): the same states as `label_hidden_states` on the padded half."""
    out = model(
        input_ids=packed.input_ids,
        attention_mask=model_attention_mask(model, packed.attention_mask),
        position_ids=packed.position_ids,
        output_hidden_states=True,
        use_cache=False,
        logits_to_keep=1,
    )
    hidden = out.hidden_states[-1]  # [G, T, D]
    return hidden[packed.predictors[:, 0], packed.predictors[:, 1]]


def _checkpointing(model: torch.nn.Module) -> bool:
    """Whether gradient checkpointing is on: its layers drop a passed key/value cache, so the
    factual prompts' shared start cannot be reused (rows would silently not see it)."""
    inner = getattr(model, "module", model)  # DeepSpeed engine; peft forwards the attribute
    if hasattr(inner, "is_activation_checkpointing"):  # transformers >= 5.2x; the old name warns
        return bool(inner.is_activation_checkpointing)
    return bool(getattr(inner, "is_gradient_checkpointing", False))


def compute_cft_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    alpha: float,
    beta: float,
    *,
    normalizer: float | torch.Tensor | None = None,
    weight_causal_only: bool = False,
    token_normalizer: float | torch.Tensor | None = None,
    run_counterfactual: bool | None = None,
    lm_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    pack_counterfactual: bool = True,
    share_factual_prefix: bool = True,
) -> CFTLossOutput:
    """One CFT step on a paired batch from `cft_core.collate.PairedCollator`.

    Args:
        model: causal LM whose logits are `output_logits(model)` of its final hidden state
            (`check_model_supported`); called as a whole (so DeepSpeed / peft hooks run), with
            logits for one position only.
        batch: input_ids / attention_mask / labels [B, Tf] (factual half) and
            cf_input_ids / cf_attention_mask / cf_labels [B, Tc] (counterfactual half,
            padded to its own length Tc < Tf). Both halves carry the same response tokens.
        alpha, beta: CFT hyper-parameters (causal-term weight, last-token weight).
        normalizer, weight_causal_only, token_normalizer: see `cft_loss`.
        run_counterfactual: run the counterfactual half; default alpha > 0. With alpha = 0
            (SFT, +Pos) skipping it halves the cost and reports causal = 0.
        lm_head: hidden [N, D] -> logits [N, V]; default `output_logits(model)` (the model's
            head, then its post-head transform if it has one). The head is called as a module,
            never read as a weight, so ZeRO-3 can gather its partitions.
        pack_counterfactual: run the counterfactual prompt, which every row shares, once per
            pack instead of once per row (`cft_core.packing`; same values and gradients). Falls
            back to the padded half when the model's attention kernel takes no custom mask.
        share_factual_prefix: run the tokens every factual prompt starts with (preamble,
            instruction, the history's introduction: ~70 tokens, a third or more of a prompt)
            once per micro-batch, their keys and values repeated to the rows (`cft_core.prefix`;
            same values and gradients). Eager and SDPA attention only, as packing, and not under
            gradient checkpointing (whose layers drop a passed cache).
    """
    if run_counterfactual is None:
        run_counterfactual = alpha > 0
    h_f, y, predicts = label_hidden_states(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"],
        share_prefix=(share_factual_prefix and supports_packing(model) and not _checkpointing(model)
                      and can_share_prefix(model, batch["input_ids"].shape[1])),
    )
    w = token_weights(predicts, beta)[predicts]  # [N], same row-major order as h_f
    head = lm_head if lm_head is not None else output_logits(model)

    if not run_counterfactual:
        return cft_loss(
            head(h_f), None, y, w, alpha, normalizer,
            weight_causal_only=weight_causal_only, token_normalizer=token_normalizer,
        )

    cf = (batch["cf_input_ids"], batch["cf_attention_mask"], batch["cf_labels"])
    # A pack is one long row, but its mask is taken as it is, windowed layers included (tested):
    # each of its rows sees what it sees alone while that row fits the window.
    pack = pack_counterfactual and supports_packing(model) and can_share_prefix(model, cf[0].shape[1])
    packed = pack_shared_prefix(*cf) if pack else None
    if packed is None:
        h_c, y_c, _ = label_hidden_states(model, *cf)
    else:
        h_c, y_c = packed_label_hidden_states(model, packed), packed.targets
    if not torch.equal(y, y_c):
        raise ValueError("factual and counterfactual halves carry different response tokens")
    # One head call on both halves' rows: [2N, D] -> [2N, V] (one gather under ZeRO-3).
    logits = head(torch.cat([h_f, h_c], dim=0))
    z_f, z_c = logits.split(h_f.shape[0], dim=0)
    return cft_loss(
        z_f, z_c, y, w, alpha, normalizer,
        weight_causal_only=weight_causal_only, token_normalizer=token_normalizer,
    )


def window_normalizers(
    batches: list[dict[str, torch.Tensor]], beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total weight, total label tokens) of an accumulation window of paired batches.

    Pass them as `normalizer` / `token_normalizer` to every micro-batch of the window.
    """
    weight = torch.zeros((), dtype=torch.float32)
    tokens = torch.zeros((), dtype=torch.float32)
    for b in batches:
        predicts = b["labels"][:, 1:] != IGNORE_INDEX
        weight = weight + token_weights(predicts.cpu(), beta).sum()
        tokens = tokens + predicts.sum().cpu()
    return weight, tokens
