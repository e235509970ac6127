"""Batched beam-search generation from the factual prompt (cft-method.md, section 3).

`model.generate` with beam search repeats every prompt once per beam before its first forward
pass, so a batch of B prompts of P tokens costs B x beams x P prompt tokens (on 2 CPU cores the
prompt pass is most of the time). Here the prompt, all but its last token, runs once per prompt
and the key/value cache is repeated for the beams (`shared_prefill`); generate then starts from
the last prompt token. The beams see the same keys and values, so the output is the same.

The repeated cache lives in `BeamPrefixLayer`s: per layer one buffer allocated for the whole
search, written in place. The stock cache copies every layer's keys and values twice per decoding
step (a concatenation to append the new token, an index_select to reorder the beams): with ~200
prompt tokens x 80 beams that was a quarter of a batch's ranking time on 2 cores. Here a step
writes its one new token, and a reorder moves only the generated part: beam search reorders beams
within each prompt, whose beams share the same prompt keys, so the prompt part never moves.

The prompts themselves share their first ~70 tokens (preamble, instruction, the history's
introduction), half of a 10-title prompt. Those run once per batch, laid out in the first columns
with each row's own tokens right-aligned after them, or once per model when a `PromptPrefixCache`
keeps them (`cft_core.prefix`; the `Ranker` holds one, so evaluation and serving compute them once).

The search is the settings' alone. `generate` fills every field its config leaves unset from the
model's own `generation_config` (the model folder's generation_config.json): an Instruct model's
repetition_penalty, a min_length or suppressed tokens would re-rank or prune the beams, constrained
ones included (cft-method.md, section 5). For the call, the model's config is the search's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache, DynamicLayer

from cft_core.constrained import TitleTrie, TrieLogitsProcessor
from cft_core.modeling import model_device, recurrent_layer_types
from cft_core.prefix import (
    PromptPrefixCache,
    can_share_prefix,
    common_prefix_length,
    forward_after_prefix,
    layout_prompts,
)
from cft_core.prompts import PromptBuilder


@dataclass(frozen=True)
class GenerationSettings:
    """Beam search settings. The values (and why) live in `schemas.config.EvalConfig`; the
    reference uses 5 beams, 5 returned, min 4 / max 128 new tokens, length penalty 1.0."""

    num_beams: int
    num_return_sequences: int
    min_new_tokens: int  # free generation only; a constrained beam may end after one token
    max_new_tokens: int
    length_penalty: float
    batch_size: int  # prompts per generate call


def response_token_ids(tokenizer, prompts: PromptBuilder, titles: Sequence[str]) -> list[list[int]]:
    """Each title's label tokens, exactly as `PairedCollator` builds them (title, quote, EOS)."""
    encoded = tokenizer([prompts.response(t) for t in titles], add_special_tokens=False)["input_ids"]
    return [ids + [tokenizer.eos_token_id] for ids in encoded]


class BeamPrefixLayer(DynamicLayer):
    """One decoder layer's key/value cache for a beam search from shared prompts.

    keys: [B, H, P, Dk], values: [B, H, P, Dv], the prompts' cache (one row per prompt; Dk != Dv
    in multi-head latent attention, e.g. MiniCPM3). The buffers are [B x beams, H, P + room, D.]:
    rows beam-major within each prompt (as generate lays them out), the prompt in [:P], generated
    tokens appended after it in place. `keys`/`values` are views of the filled part,
    [B x beams, H, length, D.], which is what attention reads.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, beams: int, room: int):
        super().__init__()
        self.prompt_length = keys.shape[-2]

        def buffer(states: torch.Tensor) -> torch.Tensor:
            rows, heads, _, dim = states.shape
            return states.new_empty((rows * beams, heads, self.prompt_length + room, dim))

        self.key_buffer, self.value_buffer = buffer(keys), buffer(values)
        self.key_buffer[:, :, : self.prompt_length] = keys.repeat_interleave(beams, dim=0)
        self.value_buffer[:, :, : self.prompt_length] = values.repeat_interleave(beams, dim=0)
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._set_length(self.prompt_length)

    def _set_length(self, length: int) -> None:
        self.length = length
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append the step's [B x beams, H, q, D] states; returns all keys and values so far."""
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise RuntimeError(f"beam cache full: {end} positions, room for {self.key_buffer.shape[-2]}")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self._set_length(end)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Rows take the generated part of the rows `beam_idx` names; the prompt part is the same
        for every beam of a prompt and beam search never moves a beam to another prompt."""
        generated = slice(self.prompt_length, self.length)
        beam_idx = beam_idx.to(self.device)
        self.key_buffer[:, :, generated] = self.key_buffer[beam_idx, :, generated]
        self.value_buffer[:, :, generated] = self.value_buffer[beam_idx, :, generated]

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a BeamPrefixLayer is built already repeated for its beams")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a BeamPrefixLayer serves beam search only")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a BeamPrefixLayer serves beam search only")


@torch.no_grad()
def shared_prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_beams: int, room: int,
                   shared: int = 0, prefix_cache: PromptPrefixCache | None = None):
    """Cache of the prompts [B, T] without their last token, computed once per prompt and
    repeated to B x num_beams rows (beam-major within each prompt, as generate lays them out),
    with room for `room` more positions (the last prompt token and the generated ones).

    shared: the first `shared` columns hold the same tokens in every row (`layout_prompts`); they
    run once for the whole batch, or not at all when `prefix_cache` holds them already."""
    past, _ = forward_after_prefix(model, input_ids[:, :-1], attention_mask[:, :-1], shared, prefix_cache)
    cache = DynamicCache()
    cache.layers = [BeamPrefixLayer(layer.keys, layer.values, num_beams, room) for layer in past.layers]
    return cache


def beam_search_config(settings: GenerationSettings, tokenizer, constrained: bool,
                       with_scores: bool) -> GenerationConfig:
    """The whole beam search as one config: no sampling, the settings' sizes, the tokenizer's
    special tokens; every other field at transformers' neutral default."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        num_beams=settings.num_beams, num_return_sequences=settings.num_return_sequences,
        min_new_tokens=1 if constrained else settings.min_new_tokens,  # a catalogue title may be short
        max_new_tokens=settings.max_new_tokens, length_penalty=settings.length_penalty,
        do_sample=False, early_stopping=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id,
        return_dict_in_generate=True, output_scores=with_scores,
    )


@contextmanager
def only_this_generation_config(model, config: GenerationConfig) -> Iterator[None]:
    """Within the block, `model.generation_config` is `config`, so generate has nothing of the
    model's own to fill in (module docstring); restored after, also on an error. One thread per
    model at a time (serving ranks in one worker thread)."""
    own = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = own


@torch.no_grad()
def generate_titles(
    model,
    tokenizer,
    prompt_texts: Sequence[str],
    settings: GenerationSettings,
    trie: TitleTrie | None = None,
    progress: bool = True,
    share_prefill: bool = True,
    with_scores: bool = False,
    prefix_cache: PromptPrefixCache | None = None,
    share_prefix: bool = True,
    banned: Sequence[Sequence[tuple[int, int]]] | None = None,
):
    """Beam search from each prompt; returns, per prompt, `num_return_sequences` parsed titles,
    best first. With `trie`, every beam is constrained to a catalogue title, and `banned[i]`
    (`TitleTrie.banned_edges`) takes the titles prompt i must not yield out of its tree. `share_prefill`
    runs each prompt once rather than once per beam (see the module docstring), and the tokens
    that all prompts of a batch start with once per batch, or once per `prefix_cache`
    (`share_prefix=False`: every row runs its whole prompt, for comparisons).

    with_scores: also return, per prompt, each beam's score (its summed token log-probability
    divided by length ** length_penalty, as beam search ranks them; non-increasing).
    progress: a bar per batch, on a terminal only (tqdm's disable=None: none in a log file)."""
    model.eval()
    device = model_device(model)
    # The beam cache holds keys and values; a model with recurrent layers keeps its own cache.
    share_prefill = share_prefill and not recurrent_layer_types(model)
    if trie is not None:
        trie = trie.to(device)
    config = beam_search_config(settings, tokenizer, constrained=trie is not None, with_scores=with_scores)
    out: list[list[str]] = []
    scores: list[list[float]] = []
    batches = range(0, len(prompt_texts), settings.batch_size)
    for start in tqdm(batches, desc="generating", disable=None if progress else True, unit="batch"):
        chunk = list(prompt_texts[start : start + settings.batch_size])
        rows = tokenizer(chunk, add_special_tokens=True)["input_ids"]
        shared = 0  # tokens every prompt of the batch starts with, run once
        longest = max(len(r) for r in rows) + settings.max_new_tokens  # the widest a row gets
        if share_prefill and share_prefix and can_share_prefix(model, longest):
            # each row keeps its last token: generate feeds it
            shared = min(common_prefix_length(rows), min(len(r) for r in rows) - 1)
        ids, mask = layout_prompts(rows, config.pad_token_id, shared)
        width = ids.shape[1]
        processors = None
        if trie is not None:
            chunk_banned = banned[start : start + settings.batch_size] if banned is not None else None
            processors = [TrieLogitsProcessor(trie, width, tokenizer.eos_token_id, chunk_banned, settings.num_beams)]
        ids, mask = ids.to(device), mask.to(device)
        # Room: the last prompt token, then at most max_new_tokens generated ones.
        cache = (shared_prefill(model, ids, mask, settings.num_beams, room=1 + settings.max_new_tokens,
                                shared=shared, prefix_cache=prefix_cache)
                 if share_prefill and width > 1 else None)
        with only_this_generation_config(model, config):
            prefilled = {"past_key_values": cache} if cache is not None else {}  # else the model's own cache
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                 logits_processor=processors, **prefilled)
        texts = tokenizer.batch_decode(gen.sequences[:, width:], skip_special_tokens=True)
        k = settings.num_return_sequences
        out += [[PromptBuilder.parse_response(t) for t in texts[i * k : (i + 1) * k]] for i in range(len(chunk))]
        if with_scores:
            flat = gen.sequences_scores.float().cpu().tolist()
            scores += [flat[i * k : (i + 1) * k] for i in range(len(chunk))]
    return (out, scores) if with_scores else out
