"""The one prompt builder for training, validation, inference and grounding (cft-method.md, 1-2).

Factual prompt (Alpaca style, with the history)::

    Below is an instruction that describes a task, paired with an input that provides further
    context. Write a response that appropriately completes the request.

    ### Instruction:
    Given a list of movies the user has watched before, please recommend a new movie ...

    ### Input:
    The user has watched the following movies before: "A", "B", "C"

    ### Response:
    "

Counterfactual prompt: the same with the `### Input:` block and the preamble's "paired with an
input" clause removed, i.e. as if the user had no history.

The response is `Title"` followed by EOS. The opening quote belongs to the prompt (the response
prefix), so the label tokens are exactly the title, the closing quote and EOS, and generation
starts at the title's first token. Deliberate deviation from the reference: its training template
is indented by four spaces and its inference template is not; here both are the same string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
PREAMBLE_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
RESPONSE_PREFIX = '"'  # opening quote of the title; part of the prompt, never a label
RESPONSE_SUFFIX = '"'  # closing quote; a label token, so the model learns where titles end


@dataclass(frozen=True)
class Domain:
    """Wording of one recommendation domain."""

    name: str
    instruction: str
    history_intro: str  # followed by the quoted, comma-separated history titles


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain(
            "movies",
            "Given a list of movies the user has watched before, please recommend a new movie "
            "that the user likes to the user.",
            "The user has watched the following movies before:",
        ),
        Domain(
            "games",
            "Given a list of video games the user has played before, please recommend a new "
            "video game that the user likes to the user.",
            "The user has played the following video games before:",
        ),
        Domain(
            "products",
            "Given a list of items the user has bought before, please recommend a new item "
            "that the user likes to the user.",
            "The user has bought the following items before:",
        ),
    )
}


@dataclass(frozen=True)
class PromptBuilder:
    """Builds the factual and counterfactual prompts and the response text of one domain."""

    domain: Domain

    @classmethod
    def for_domain(cls, name: str) -> PromptBuilder:
        try:
            return cls(DOMAINS[name])
        except KeyError:
            raise ValueError(f"unknown domain {name!r}; choose one of {sorted(DOMAINS)}") from None

    def history(self, titles: Sequence[str]) -> str:
        """`The user has watched the following movies before: "A", "B"` (oldest first)."""
        return self.domain.history_intro + " " + ", ".join(f'"{t}"' for t in titles)

    def factual(self, history_titles: Sequence[str]) -> str:
        """Prompt with the user's history, ending with the response prefix."""
        if not history_titles:
            raise ValueError("a factual prompt needs at least one history title")
        return (
            f"{PREAMBLE_WITH_INPUT}\n\n"
            f"### Instruction:\n{self.domain.instruction}\n\n"
            f"### Input:\n{self.history(history_titles)}\n\n"
            f"### Response:\n{RESPONSE_PREFIX}"
        )

    def fitted_history(self, history_titles: Sequence[str], count_tokens: Callable[[str], int],
                       budget: int) -> list[str]:
        """The newest of `history_titles` whose factual prompt has at most `budget` tokens
        (`count_tokens`: prompt text -> its token count): the oldest titles are dropped first,
        one at a time. [] when not even the newest title alone fits. The one rule by which
        training records (`PairedCollator`) and ranked prompts (`Ranker.prompt`) are cut."""
        titles = list(history_titles)
        while titles and count_tokens(self.factual(titles)) > budget:
            titles = titles[1:]
        return titles

    def counterfactual(self) -> str:
        """Prompt without the history: the `### Input:` block removed."""
        return (
            f"{PREAMBLE_NO_INPUT}\n\n"
            f"### Instruction:\n{self.domain.instruction}\n\n"
            f"### Response:\n{RESPONSE_PREFIX}"
        )

    @staticmethod
    def response(title: str) -> str:
        """Label text for a target (EOS is appended as a token id by the collator)."""
        return f"{title}{RESPONSE_SUFFIX}"

    @staticmethod
    def parse_response(text: str) -> str:
        """Title from generated text: up to the closing quote (or the whole text)."""
        end = text.find(RESPONSE_SUFFIX + "\n")
        if end < 0:
            end = len(text) - 1 if text.endswith(RESPONSE_SUFFIX) else len(text)
        return text[:end].strip()
