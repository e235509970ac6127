"""Small helpers about Hugging Face causal LMs that training and inference share.

Loss, packing, collation, generation and grounding import these from here, so the inference
modules do not depend on the loss module.
"""

from __future__ import annotations

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
