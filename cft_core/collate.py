"""Instruction records -> paired (factual, counterfactual) token batches for CFT.

Each half is `prompt tokens + response tokens`, where the response tokens (title, closing quote,
EOS) are tokenised once and shared, so both halves predict exactly the same labels. Prompt and
response are tokenised separately and concatenated: the label boundary is exact and identical
to what inference sees (the prompt alone, then generated title tokens).

Each half is padded to its own longest row: the counterfactual half has no history and is
several times shorter, and padding it to the factual length (as the reference does) would
spend most of its forward pass on padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cft_core.modeling import IGNORE_INDEX
from cft_core.prompts import PromptBuilder
from cft_core.sequences import dictionary_codes


class RecordTooLongError(ValueError):
    """A record that does not fit `cutoff_len` even with its newest history title alone: the
    data's titles are longer than the setting allows. `user_error`: a message, not a traceback."""

    user_error = True


def _per_title(titles, count_many, counted: dict[str, int]) -> np.ndarray:
    """count(title) [N] for each of `titles` (a list, or an Arrow string array, chunked or not,
    plain or dictionary-encoded), computed once per distinct title: `count_many` maps a list of
    titles to their counts in one call (a tokenizer's batch), and `counted` (title -> count) keeps
    them across calls."""
    values, codes = dictionary_codes(titles)  # each distinct title looked up once, not once per chunk
    distinct = values.to_pylist()
    new = [title for title in distinct if title not in counted]
    counted.update(zip(new, count_many(new), strict=True))
    per_distinct = np.array([counted[t] for t in distinct], dtype=np.int64)
    return per_distinct[codes]


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example (lists of ints, no padding)."""

    factual_prompt: list[int]
    counterfactual_prompt: list[int]
    response: list[int]  # title + closing quote + EOS: the label tokens
    history_used: int  # history titles kept after fitting into the cutoff


def _pad(rows: Sequence[list[int]], value: int, side: str, multiple: int | None) -> torch.Tensor:
    """[B] lists -> LongTensor[B, T] padded on `side` to the longest row (rounded up)."""
    t = max(len(r) for r in rows)
    if multiple:
        t = -(-t // multiple) * multiple
    out = torch.full((len(rows), t), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "right":
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        else:
            out[i, t - len(r) :] = torch.tensor(r, dtype=torch.long)
    return out


@dataclass
class PairedCollator:
    """Callable collator: list of instruction records -> dict of paired tensors.

    A record is a mapping with `history_titles` (oldest first) and `target_title`.

    Output keys (all LongTensor):
        input_ids, attention_mask, labels          [B, Tf]  factual half
        cf_input_ids, cf_attention_mask, cf_labels [B, Tc]  counterfactual half (if enabled)
    labels are IGNORE_INDEX except at the response tokens.
    """

    tokenizer: Any
    prompts: PromptBuilder
    cutoff_len: int = 1024
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None
    with_counterfactual: bool = True
    _cf_prompt_ids: list[int] | None = field(default=None, init=False, repr=False)
    # `records_too_long`'s token counts per title (one-title prompt, response), kept across splits.
    _prompt_tokens: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _response_tokens: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; the response must end with one")

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def _prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def _response_ids(self, title: str) -> list[int]:
        """The label tokens of a target: title, closing quote, EOS."""
        return self.tokenizer(self.prompts.response(title), add_special_tokens=False)["input_ids"] + [
            self.tokenizer.eos_token_id]

    def encode(self, record: Mapping[str, Any]) -> EncodedExample:
        """Tokenise one record; drops the oldest history titles until it fits `cutoff_len`."""
        history = list(record["history_titles"])
        response = self._response_ids(record["target_title"])
        if self._cf_prompt_ids is None:  # the same for every record of the domain
            self._cf_prompt_ids = self._prompt_ids(self.prompts.counterfactual())
        tried: dict[str, list[int]] = {}  # prompt text -> ids, so the kept prompt is not tokenised twice

        def count_tokens(text: str) -> int:
            tried[text] = self._prompt_ids(text)
            return len(tried[text])

        budget = self.cutoff_len - len(response)  # the prompt's share of cutoff_len
        kept = self.prompts.fitted_history(history, count_tokens, budget)
        if not kept:
            tokens = len(tried[self.prompts.factual(history[-1:])]) + len(response)  # its last try
            raise RecordTooLongError(
                f"record for target {record['target_title']!r} does not fit cutoff_len="
                f"{self.cutoff_len} even with one history title ({tokens} tokens)"
            )
        factual = tried[self.prompts.factual(kept)]
        return EncodedExample(factual, list(self._cf_prompt_ids), response, len(kept))

    def records_too_long(self, newest_titles, target_titles) -> list[tuple[int, int]]:
        """(position, tokens it needs) of each record that does not fit cutoff_len even with its
        newest history title alone, which `encode` would raise for: found before training, so
        that none stops a run midway. A record is given by its newest history title and its
        target title (`newest_titles[i]`, `target_titles[i]`: lists, or Arrow arrays of strings);
        what it needs is its one-title prompt and its response, each a function of one title, so
        every distinct title is tokenised once, in batches (one call a title took 31 s for the
        ~60,000 titles of an ML-25M-sized window, 94 us a call), and the records are summed in numpy."""
        def prompt_tokens(titles: list[str]) -> list[int]:
            return self._token_counts([self.prompts.factual([t]) for t in titles], add_special_tokens=True)

        def response_tokens(titles: list[str]) -> list[int]:  # + EOS, as `_response_ids`
            return [n + 1 for n in self._token_counts([self.prompts.response(t) for t in titles], False)]

        needs = (_per_title(newest_titles, prompt_tokens, self._prompt_tokens)
                 + _per_title(target_titles, response_tokens, self._response_tokens))
        return [(int(i), int(needs[i])) for i in np.flatnonzero(needs > self.cutoff_len)]

    def _token_counts(self, texts: list[str], add_special_tokens: bool, batch: int = 4096) -> list[int]:
        """len(tokenizer(text)["input_ids"]) of each text, `batch` texts per tokenizer call."""
        return [len(ids) for start in range(0, len(texts), batch)
                for ids in self.tokenizer(texts[start:start + batch], add_special_tokens=add_special_tokens)["input_ids"]]

    def collate_encoded(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        """Pad already encoded examples into a paired batch."""
        halves = {"": [e.factual_prompt for e in examples]}
        if self.with_counterfactual:
            halves["cf_"] = [e.counterfactual_prompt for e in examples]
        batch: dict[str, torch.Tensor] = {}
        for prefix, prompts in halves.items():
            ids = [p + e.response for p, e in zip(prompts, examples, strict=True)]
            labels = [[IGNORE_INDEX] * len(p) + e.response for p, e in zip(prompts, examples, strict=True)]
            side, mult = self.padding_side, self.pad_to_multiple_of
            batch[prefix + "input_ids"] = _pad(ids, self.pad_id, side, mult)
            batch[prefix + "attention_mask"] = _pad([[1] * len(r) for r in ids], 0, side, mult)
            batch[prefix + "labels"] = _pad(labels, IGNORE_INDEX, side, mult)
        return batch

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return self.collate_encoded([self.encode(r) for r in records])
