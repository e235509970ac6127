"""Small helpers about Hugging Face causal LMs that training and inference share.

Loss, packing, collation, generation and grounding import these from here, so the inference
modules do not depend on the loss module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding): the HF convention


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0..L-1 over the real tokens of each row, whatever the padding side.

    attention_mask: [B, T] (1 = token, 0 = padding) -> LongTensor[B, T].
    Without this, a left-padded row would start at position (number of pads), not 0.
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The LM head module of a (possibly peft- or DeepSpeed-wrapped) causal LM."""
    inner = getattr(model, "module", model)  # DeepSpeed engine / DDP
    return inner.get_output_embeddings()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def model_type(model: torch.nn.Module) -> str | None:
    """The type of the model's own config (`gemma3` for Gemma-3's multimodal class, `gemma3_text`
    for its text-only one), through a DeepSpeed engine or peft; None without a config."""
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "model_type", None)


def _text_config(model: torch.nn.Module):
    """The config of the model's text part (itself for a text-only model), through a DeepSpeed
    engine (`.module`) or peft (which forwards `.config`); None without a config."""
    config = getattr(getattr(model, "module", model), "config", None)
    return config.get_text_config() if config is not None else None


def attention_window(model: torch.nn.Module) -> int | None:
    """The sliding attention window of the model's windowed layers (Mistral, Gemma-2/3, Cohere2:
    each query sees the `window` columns before it), or None when every layer sees the whole
    sequence (Llama, SmolLM2, Qwen2/3 as configured by default)."""
    text = _text_config(model)
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None)
    if window is None or (layer_types and "sliding_attention" not in layer_types):
        return None
    return int(window)


def modules_outside_text_model(model: torch.nn.Module) -> list[str]:
    """Names of the largest submodules that take no part in reading text: none of their parameters
    belongs to the decoder (`get_decoder()`), the input embeddings or the output head. For a
    multimodal checkpoint loaded whole (Gemma-3 4B and up: ["model.vision_tower",
    "model.multi_modal_projector"]) these are its image or audio towers and projectors, which a text-only
    step never reaches; [] for a text-only model (its decoder holds everything but the head)."""
    inner = getattr(model, "module", model)
    try:
        decoder = inner.get_decoder()
    except (AttributeError, NotImplementedError):  # no known decoder: treat it all as text
        return []
    parts = (decoder, inner.get_input_embeddings(), inner.get_output_embeddings())
    text = {id(p) for part in parts if part is not None for p in part.parameters()}

    def outside(prefix: str, module: torch.nn.Module) -> list[str]:
        params = list(module.parameters())
        if params and all(id(p) not in text for p in params):
            return [prefix]
        return [name for child_name, child in module.named_children()
                for name in outside(f"{prefix}.{child_name}" if prefix else child_name, child)]

    return outside("", inner)


# Layer kinds (a config's `layer_types`, in transformers' vocabulary) that keep a recurrent state
# (Mamba / Mamba-2, gated delta-nets, short convolutions) instead of, or beside, keys and values.
RECURRENT_LAYER_TYPES = frozenset({"linear_attention", "hybrid", "hybrid_sliding", "conv"})


def recurrent_layer_types(model: torch.nn.Module) -> list[str]:
    """The recurrent layer kinds (RECURRENT_LAYER_TYPES) among the model's layers: [] for an
    attention-only decoder; ['linear_attention'] for Mamba, Qwen3-Next / Qwen3.5, Jamba,
    Granite-4.0-H; ['hybrid'] for Falcon-H1; ['conv'] for LFM2. Such a model runs every row
    whole: its state is not keys and values that a shared start could hand to the rows
    (`cft_core.prefix.can_share_prefix`)."""
    text = _text_config(model)
    return sorted(set(getattr(text, "layer_types", None) or []) & RECURRENT_LAYER_TYPES)


# Model types whose outputs change with padding (which every batched pass here has): the reason.
PADDING_CHANGES_OUTPUTS = {
    "recurrent_gemma": "its recurrent blocks' temporal convolution ignores the attention mask, so a "
                       "left-padded row's first tokens mix in the padding",
}


def _softcap(config) -> Callable[[torch.Tensor], torch.Tensor] | None:
    cap = config.final_logit_softcapping  # z -> cap * tanh(z / cap); None: no cap
    return None if cap is None else lambda z: torch.tanh(z / cap) * cap


def _divide_by_logits_scaling(config) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda z: z / config.logits_scaling


def _times_logit_scale(config) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda z: z * config.logit_scale


def _times_logits_scaling(config) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda z: z * config.logits_scaling


def _times_lm_head_multiplier(config) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda z: z * config.lm_head_multiplier


# Model types whose logits are a known elementwise function of head(final hidden state), as each
# one's forward computes them in transformers 5.x (`<Model>ForCausalLM.forward`, or the
# `<Model>ForConditionalGeneration.forward` that AutoModelForCausalLM gives for a multimodal
# checkpoint). The CFT loss applies the head to label rows itself, so it must apply the same
# function; `check_model_supported` (cft_core.loss) verifies the result on a real batch, so an
# entry that stopped matching a transformers release is refused, never trained wrong. Keyed by the
# type of the model's own config (the class that computes the logits); each function reads its
# fields from the text config (the config itself for a text-only model).
POST_HEAD_TRANSFORMS: dict[str, Callable] = {
    "gemma2": _softcap,  # final_logit_softcapping 30.0
    "gemma3_text": _softcap,  # None in Gemma-3's configs. Not "gemma3" (the multimodal class): it caps nothing
    "gemma4_text": _softcap,
    "gemma4": _softcap,  # Gemma-4's multimodal class caps with its text config's field
    "gemma4_unified_text": _softcap,
    "gemma4_unified": _softcap,
    "vaultgemma": _softcap,
    "nanochat": _softcap,
    "granite": _divide_by_logits_scaling,
    "granitemoe": _divide_by_logits_scaling,
    "granitemoeshared": _divide_by_logits_scaling,
    "granite_swa": _divide_by_logits_scaling,
    "granitemoe_swa": _divide_by_logits_scaling,
    "granitemoehybrid": _divide_by_logits_scaling,  # Granite-4.0-H (Mamba-2 and attention layers)
    # MiniCPM3 divides the hidden state before the head, which has no bias: the same logits.
    "minicpm3": _divide_by_logits_scaling,
    "cohere": _times_logit_scale,
    "cohere2": _times_logit_scale,
    "cohere2_moe": _times_logit_scale,
    # Same field name as Granite's, the other way round: why the table is keyed by type.
    "hyperclovax": _times_logits_scaling,
    "falcon_h1": _times_lm_head_multiplier,
}


def output_logits(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden [N, D] -> logits [N, V] as the model predicts with: its LM head (called as a module,
    so ZeRO-3 can gather it), then the post-head transform of POST_HEAD_TRANSFORMS, if any.

    The hidden states are cast to the head's dtype first: a model run under accelerate's mixed
    precision returns them fp32 (its forward is wrapped to convert outputs) while a bf16 head (a
    LoRA model's frozen base) takes bf16; the head is called outside that wrapper."""
    head = output_head(model)
    dtype = next(head.parameters()).dtype
    make = POST_HEAD_TRANSFORMS.get(model_type(model))
    transform = make(_text_config(model)) if make is not None else None
    if transform is None:
        return lambda hidden: head(hidden.to(dtype))
    return lambda hidden: transform(head(hidden.to(dtype)))
