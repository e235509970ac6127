"""Shared-prompt packing: the layout by hand, and the packed half against the padded half
(hidden states, CFT loss and every gradient) for both attention kernels that take a 4-D mask."""

import pytest
import torch

from cft_core.collate import PairedCollator
from cft_core.loss import (
    IGNORE_INDEX,
    compute_cft_loss,
    label_hidden_states,
    packed_label_hidden_states,
)
from cft_core.packing import pack_shared_prefix, supports_packing
from cft_core.prefix import shared_prefix_length
from cft_core.prompts import PromptBuilder
from cft_core.reference import reference_cft_loss
from cft_core.tiny import build_tiny_model
from tests.conftest import make_records

X = IGNORE_INDEX


def test_layout_by_hand():
    # Rows: prefix [5, 6] shared; row 0 has response [7, 8], row 1 [9] (right-padded with 0),
    # row 2 [3, 4] left-padded. Row 1's padding must not be read as tokens.
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 0], [0, 5, 6, 3]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [0, 1, 1, 1]])
    labels = torch.tensor([[X, X, 7, 8], [X, X, 9, X], [X, X, X, 3]])
    packed = pack_shared_prefix(ids, mask, labels, rows_per_pack=2, pad_id=0)
    # Pack 0: 5 6 | 7 8 | 9 ; pack 1: 5 6 | 3, padded to length 5.
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 3, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 0, 0]]
    # Label 7 is predicted by the prefix's last token (1), 8 by 7 (2), 9 by the prefix (1),
    # 3 by the prefix of pack 1.
    assert packed.predictors.tolist() == [[0, 1], [0, 2], [0, 1], [1, 1]]
    assert packed.targets.tolist() == [7, 8, 9, 3]
    assert packed.num_tokens == 8  # 11 real tokens padded, minus the prefix stored once less
    t, f = True, False
    assert packed.attention_mask[0, 0].tolist() == [
        [t, f, f, f, f],
        [t, t, f, f, f],
        [t, t, t, f, f],
        [t, t, t, t, f],
        [t, t, f, f, t],  # 9 sees the prefix and itself, not row 0's response
    ]
    assert packed.attention_mask[1, 0].tolist() == [
        [t, f, f, f, f],
        [t, t, f, f, f],
        [t, t, t, f, f],
        [f, f, f, t, f],  # padding sees only itself (no all-masked softmax row)
        [f, f, f, f, t],
    ]


def test_shared_prefix_stops_at_first_difference_and_first_label():
    rows = [(torch.tensor([1, 2, 3, 4]), torch.tensor([X, X, X, 4])),
            (torch.tensor([1, 2, 9, 4]), torch.tensor([X, X, X, 4]))]
    assert shared_prefix_length(rows) == 2
    rows = [(torch.tensor([1, 2, 3, 4]), torch.tensor([X, 2, 3, 4])),
            (torch.tensor([1, 2, 3, 5]), torch.tensor([X, X, 3, 5]))]
    assert shared_prefix_length(rows) == 1  # a labelled token is never shared
    ids = torch.tensor([[1, 2], [3, 4]])
    assert pack_shared_prefix(ids, torch.ones_like(ids), torch.tensor([[X, 2], [X, 4]])) is None


def _cf_batch(tokenizer, n, padding_side="right"):
    collate = PairedCollator(tokenizer, PromptBuilder.for_domain("movies"), padding_side=padding_side)
    return collate(make_records(n, seed=11))


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
@pytest.mark.parametrize("rows_per_pack", [1, 3, 16])
def test_packed_states_equal_padded_states(tiny_tokenizer, kernel, rows_per_pack):
    batch = _cf_batch(tiny_tokenizer, 7, padding_side="left")
    model = build_tiny_model(len(tiny_tokenizer), seed=2)
    model.set_attn_implementation(kernel)
    cf = (batch["cf_input_ids"], batch["cf_attention_mask"], batch["cf_labels"])
    packed = pack_shared_prefix(*cf, rows_per_pack=rows_per_pack)
    # The counterfactual prompt is shared whole: each pack holds it once.
    prompt_len = int((batch["cf_labels"][0][batch["cf_attention_mask"][0].bool()] == X).sum())
    assert packed.input_ids.shape[0] == -(-7 // rows_per_pack)
    assert packed.input_ids.numel() < batch["cf_input_ids"].numel() or rows_per_pack == 1
    assert (packed.input_ids[:, :prompt_len] == packed.input_ids[0, :prompt_len]).all()
    with torch.no_grad():
        h_padded, y_padded, _ = label_hidden_states(model, *cf)
        h_packed = packed_label_hidden_states(model, packed)
    assert torch.equal(packed.targets, y_padded)
    torch.testing.assert_close(h_packed, h_padded, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_packed_step_matches_padded_step_and_reference(tiny_tokenizer, kernel):
    batch = _cf_batch(tiny_tokenizer, 6)
    model = build_tiny_model(len(tiny_tokenizer), arch="qwen2", seed=9)
    model.set_attn_implementation(kernel)
    results = {}
    for name, fn in {
        "packed": lambda: compute_cft_loss(model, batch, 0.3, 0.25, pack_counterfactual=True),
        "padded": lambda: compute_cft_loss(model, batch, 0.3, 0.25, pack_counterfactual=False),
        "reference": lambda: reference_cft_loss(model, batch, 0.3, 0.25),
    }.items():
        model.zero_grad()
        out = fn()
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[name] = (out, grads)
    out, grads = results["packed"]
    for other in ("padded", "reference"):
        ref_out, ref_grads = results[other]
        for field in ("loss", "normal", "causal"):
            assert getattr(out, field).item() == pytest.approx(getattr(ref_out, field).item(), abs=1e-5)
        for n in grads:
            torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-5, rtol=1e-4, msg=f"{other}: {n}")


def test_kernels_without_custom_masks_use_the_padded_half(tiny_tokenizer):
    batch = _cf_batch(tiny_tokenizer, 4)
    model = build_tiny_model(len(tiny_tokenizer), seed=3)
    assert supports_packing(model)
    calls = []
    model.get_output_embeddings().register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model.config._attn_implementation = "flash_attention_2"  # as a GPU run may configure it
    assert not supports_packing(model)
    model.config._attn_implementation = "sdpa"
    # Head calls: the factual prompts' shared start (1 row), the factual rest (4), the
    # counterfactual half, then the label rows.
    compute_cft_loss(model, batch, 0.1, 0.25)
    packed_rows = calls[2]
    calls.clear()
    compute_cft_loss(model, batch, 0.1, 0.25, pack_counterfactual=False)
    # logits_to_keep=1: the backbone's head call sees one row per sequence it ran.
    assert (packed_rows, calls[2]) == (1, 4)


def test_sliding_window_layers_take_the_packed_mask_as_it_is(tiny_tokenizer):
    """Gemma-2 alternates sliding-window and full layers. With a window longer than every row
    (prompt + response) but shorter than a pack, the packed states still equal the padded ones:
    the layers take the 4-D mask as it is, so a response far down a pack still sees its prompt."""
    batch = _cf_batch(tiny_tokenizer, 7, padding_side="left")
    cf = (batch["cf_input_ids"], batch["cf_attention_mask"], batch["cf_labels"])
    packed = pack_shared_prefix(*cf, rows_per_pack=16)
    window = batch["cf_input_ids"].shape[1] + 1  # the longest row fits; the pack does not
    assert packed.input_ids.shape[1] > window
    model = build_tiny_model(len(tiny_tokenizer), arch="gemma2", sliding_window=window, seed=4)
    assert "sliding_attention" in model.config.layer_types
    with torch.no_grad():
        h_padded, _, _ = label_hidden_states(model, *cf)
        h_packed = packed_label_hidden_states(model, packed)
    torch.testing.assert_close(h_packed, h_padded, atol=1e-5, rtol=1e-4)
