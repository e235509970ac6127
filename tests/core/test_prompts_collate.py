"""Prompt builder and paired collation: exact label spans, shared response, separate padding."""

import pyarrow as pa
import pytest
import torch

from cft_core.collate import PairedCollator
from cft_core.modeling import IGNORE_INDEX
from cft_core.prompts import DOMAINS, PromptBuilder
from tests.conftest import make_records


def test_factual_and_counterfactual_prompts():
    pb = PromptBuilder.for_domain("movies")
    f = pb.factual(["Toy Story", "Heat"])
    c = pb.counterfactual()
    assert 'The user has watched the following movies before: "Toy Story", "Heat"' in f
    assert "### Input:" in f and "paired with an input" in f
    assert "### Input:" not in c and "paired with an input" not in c and "Toy Story" not in c
    # Same instruction and the same response prefix: only the history differs.
    assert f.endswith('### Response:\n"') and c.endswith('### Response:\n"')
    assert DOMAINS["movies"].instruction in c
    assert pb.response("Heat") == 'Heat"'


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_every_domain_builds(name):
    pb = PromptBuilder.for_domain(name)
    assert DOMAINS[name].history_intro in pb.factual(["A"])


def test_unknown_domain_and_empty_history_are_errors():
    with pytest.raises(ValueError, match="unknown domain 'books'"):
        PromptBuilder.for_domain("books")
    with pytest.raises(ValueError, match="at least one history title"):
        PromptBuilder.for_domain("movies").factual([])


@pytest.mark.parametrize(
    ("text", "title"),
    [('Toy Story"', "Toy Story"), ('Toy Story"\nmore', "Toy Story"), ("Toy Sto", "Toy Sto"),
     ('The "Best" Game"', 'The "Best" Game')],
)
def test_parse_response(text, title):
    assert PromptBuilder.parse_response(text) == title


@pytest.mark.parametrize("side", ["right", "left"])
def test_labels_cover_title_quote_and_eos_in_both_halves(tiny_tokenizer, side):
    records = make_records(6, seed=1)
    batch = PairedCollator(tiny_tokenizer, PromptBuilder.for_domain("movies"), padding_side=side)(records)
    eos = tiny_tokenizer.eos_token_id
    for i, rec in enumerate(records):
        for prefix in ("", "cf_"):
            labels = batch[prefix + "labels"][i]
            ids = batch[prefix + "input_ids"][i]
            span = labels[labels != IGNORE_INDEX]
            # labels equal the input tokens where set, and decode to `Title"` + EOS
            torch.testing.assert_close(ids[labels != IGNORE_INDEX], span)
            assert span[-1].item() == eos
            assert tiny_tokenizer.decode(span[:-1]) == rec["target_title"] + '"'
        f_span = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        c_span = batch["cf_labels"][i][batch["cf_labels"][i] != IGNORE_INDEX]
        assert torch.equal(f_span, c_span), "both halves carry the same response tokens"
        # The prompt part decodes to the builder's prompt (BOS first).
        mask = batch["attention_mask"][i].bool() & (batch["labels"][i] == IGNORE_INDEX)
        prompt = tiny_tokenizer.decode(batch["input_ids"][i][mask], skip_special_tokens=True)
        assert prompt == PromptBuilder.for_domain("movies").factual(rec["history_titles"])


def test_each_half_is_padded_to_its_own_length(tiny_tokenizer):
    collate = PairedCollator(tiny_tokenizer, PromptBuilder.for_domain("movies"))
    batch = collate(make_records(4, seed=2))
    real_f = batch["attention_mask"].sum(1).max().item()
    real_c = batch["cf_attention_mask"].sum(1).max().item()
    assert batch["input_ids"].shape[1] == real_f
    assert batch["cf_input_ids"].shape[1] == real_c < real_f
    # pad_to_multiple_of rounds each half up separately
    b8 = PairedCollator(tiny_tokenizer, PromptBuilder.for_domain("movies"), pad_to_multiple_of=8)(make_records(4, seed=2))
    assert b8["input_ids"].shape[1] % 8 == 0 and b8["cf_input_ids"].shape[1] % 8 == 0
    assert b8["cf_input_ids"].shape[1] < b8["input_ids"].shape[1]


def test_cutoff_drops_oldest_history_first(tiny_tokenizer):
    pb = PromptBuilder.for_domain("movies")
    rec = {"history_titles": ["Toy Story", "GoldenEye", "Four Rooms", "Heat"], "target_title": "Babe"}
    full = PairedCollator(tiny_tokenizer, pb).encode(rec)
    n_full = len(full.factual_prompt) + len(full.response)
    one_less = tiny_tokenizer(pb.factual(rec["history_titles"][1:]))["input_ids"]
    cut = PairedCollator(tiny_tokenizer, pb, cutoff_len=len(one_less) + len(full.response)).encode(rec)
    assert cut.history_used == 3 and cut.factual_prompt == one_less
    assert len(cut.factual_prompt) + len(cut.response) < n_full
    with pytest.raises(ValueError, match="does not fit cutoff_len=10"):
        PairedCollator(tiny_tokenizer, pb, cutoff_len=10).encode(rec)


def test_records_too_long_are_exactly_those_encode_refuses(tiny_tokenizer):
    """The pre-check finds the records `encode` would stop a training on, no more and no fewer,
    for every cutoff from none fitting to all fitting; the error is the user's (a message, not a
    traceback)."""
    from cft_core.collate import RecordTooLongError
    from tests.conftest import TITLES

    pb = PromptBuilder.for_domain("movies")
    long = " ".join(TITLES[:12])  # one title many times longer than the rest
    records = [{"history_titles": [TITLES[i], TITLES[i + 1]], "target_title": TITLES[i + 2]} for i in range(len(TITLES) - 2)]
    records += [{"history_titles": [TITLES[0], long], "target_title": TITLES[3]},
                {"history_titles": [long, TITLES[5]], "target_title": long}]
    needs = []
    for r in records:
        prompt = tiny_tokenizer(pb.factual(r["history_titles"][-1:]))["input_ids"]
        needs.append(len(prompt) + len(tiny_tokenizer(pb.response(r["target_title"]), add_special_tokens=False)["input_ids"]) + 1)
    for cutoff in range(min(needs) - 1, max(needs) + 2):
        collator = PairedCollator(tiny_tokenizer, pb, cutoff_len=cutoff)
        refused = []
        for i, r in enumerate(records):
            try:
                collator.encode(r)
            except RecordTooLongError as e:
                assert e.user_error
                refused.append(i)
        newest, targets = [r["history_titles"][-1] for r in records], [r["target_title"] for r in records]
        found = collator.records_too_long(newest, targets)
        assert collator.records_too_long(pa.chunked_array([newest[:7], newest[7:]]), pa.array(targets)) == found
        encoded = pa.chunked_array([pa.array(newest[:7]).dictionary_encode(), pa.array(newest[7:]).dictionary_encode()])
        assert collator.records_too_long(encoded, pa.array(targets).dictionary_encode()) == found
        assert [i for i, _ in found] == refused
        assert all(n == needs[i] > cutoff for i, n in found)


def test_without_counterfactual_half(tiny_tokenizer):
    batch = PairedCollator(tiny_tokenizer, PromptBuilder.for_domain("games"), with_counterfactual=False)(make_records(2))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
