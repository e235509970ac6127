"""Tiny causal LMs and tokenizers built in code: for tests, smoke runs and benchmarks.

No hub access is needed: the tokenizer is a byte-level BPE trained in a second on the texts the
model will see (prompt templates and item titles), the model a randomly initialised Llama or
Qwen2 of a few hundred thousand parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from cft_core.model_sources import give_weights_the_usual_mode

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`; adds BOS to every encoded prompt, like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )


TINY_ARCHITECTURES = ("llama", "qwen2", "gemma2", "granite", "cohere")


def build_tiny_model(
    vocab_size: int,
    arch: str = "llama",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    sliding_window: int = 4096,
) -> torch.nn.Module:
    """Randomly initialised fp32 causal LM of the given shape (eager attention, deterministic).
    sliding_window: gemma2 only, the window of its windowed layers (Gemma-2's 4,096; a short one
    makes the window shape every pass)."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),  # grouped-query attention, as in the real ones
        max_position_embeddings=2048,
        tie_word_embeddings=tie_word_embeddings,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).float()
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).float()
    # Architectures that transform their logits after the head (cft_core.modeling.output_logits),
    # each with the transform set to bite on a random tiny model's logits (~1 or less).
    if arch == "gemma2":  # z -> cap * tanh(z / cap); real Gemma-2: cap 30 on logits of ~10-40
        from transformers import Gemma2Config, Gemma2ForCausalLM

        config = Gemma2Config(**common, head_dim=hidden_size // num_heads, final_logit_softcapping=0.5,
                              sliding_window=sliding_window)
        return Gemma2ForCausalLM(config).float()
    if arch == "granite":  # z -> z / logits_scaling
        from transformers import GraniteConfig, GraniteForCausalLM

        return GraniteForCausalLM(GraniteConfig(**common, logits_scaling=4.0)).float()
    if arch == "cohere":  # z -> z * logit_scale
        from transformers import CohereConfig, CohereForCausalLM

        return CohereForCausalLM(CohereConfig(**common, logit_scale=0.25)).float()
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHITECTURES)}")


def save_tiny_model_folder(
    folder: Path,
    texts: Iterable[str],
    *,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a Hugging Face folder (safetensors + tokenizer) holding a fresh tiny model.

    The tokenizer is trained on `texts` (a dataset's prompts and titles), then the model is
    built for its exact vocabulary. The folder then works like any model source.
    """
    tokenizer = build_tiny_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_model(
        len(tokenizer), arch=arch, hidden_size=hidden_size, num_layers=num_layers,
        num_heads=num_heads, seed=seed,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    give_weights_the_usual_mode(folder)
    tokenizer.save_pretrained(folder)
    return folder
