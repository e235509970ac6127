"""CFT loss: the kernel against hand computation, and the model-level step against the
straightforward reference (full logits, two forward passes, token loops), values and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from cft_core.collate import PairedCollator
from cft_core.loss import cft_loss, compute_cft_loss, window_normalizers
from cft_core.modeling import IGNORE_INDEX
from cft_core.prompts import PromptBuilder
from cft_core.reference import reference_cft_loss
from cft_core.tiny import TINY_ARCHITECTURES, build_tiny_model
from tests.conftest import MULTIMODAL_TYPES, TABLE_ONLY_TYPES, make_records, tiny_model_of_type

# ---------------------------------------------------------------- kernel: cft_loss


def test_hand_computed_two_token_vocab():
    # V = 2. Token 1: z_f = [0, ln 3] -> p(y=1) = 3/4, CE = ln(4/3); z_c = [0, ln 3] -> effect 0,
    # CE(effect) = ln 2. Token 2 (y = 0): z_f = [0, 0] -> ln 2; z_c = [ln 3, 0] -> effect
    # [-ln 3, 0] -> p(y=0) = 1/4, CE = ln 4. Weights 1 and 0.5.
    ln3 = math.log(3.0)
    z_f = torch.tensor([[0.0, ln3], [0.0, 0.0]])
    z_c = torch.tensor([[0.0, ln3], [ln3, 0.0]])
    y = torch.tensor([1, 0])
    w = torch.tensor([1.0, 0.5])
    out = cft_loss(z_f, z_c, y, w, alpha=0.1)
    normal = (math.log(4 / 3) + 0.5 * math.log(2)) / 1.5
    causal = (math.log(2) + 0.5 * math.log(4)) / 1.5
    assert out.normal.item() == pytest.approx(normal, abs=1e-6)
    assert out.causal.item() == pytest.approx(causal, abs=1e-6)
    assert out.loss.item() == pytest.approx(normal + 0.1 * causal, abs=1e-6)
    assert out.num_tokens == 2 and out.weight_sum.item() == pytest.approx(1.5)


def test_kernel_matches_formula_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    n, v = 7, 11
    z_f = torch.randn(n, v, generator=g, requires_grad=True)
    z_c = torch.randn(n, v, generator=g, requires_grad=True)
    y = torch.randint(0, v, (n,), generator=g)
    w = torch.rand(n, generator=g)
    out = cft_loss(z_f, z_c, y, w, alpha=0.3, normalizer=5.0)
    grads = torch.autograd.grad(out.loss, (z_f, z_c))

    zf2, zc2 = z_f.detach().clone().requires_grad_(), z_c.detach().clone().requires_grad_()
    total = 0.0
    for i in range(n):
        ce_n = -torch.log_softmax(zf2[i], -1)[y[i]]
        ce_c = -torch.log_softmax(zf2[i] - zc2[i], -1)[y[i]]
        total = total + w[i] * (ce_n + 0.3 * ce_c) / 5.0
    ref_grads = torch.autograd.grad(total, (zf2, zc2))
    assert out.loss.item() == pytest.approx(total.item(), abs=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_alpha_zero_and_no_counterfactual_is_weighted_ce():
    g = torch.Generator().manual_seed(1)
    z_f, z_c = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    y = torch.randint(0, 9, (5,), generator=g)
    ones = torch.ones(5)
    sft = cft_loss(z_f, None, y, ones, alpha=0.0)
    assert sft.loss.item() == pytest.approx(F.cross_entropy(z_f, y).item(), abs=1e-6)
    assert sft.causal.item() == 0.0
    # alpha = 0 with counterfactual logits: same loss, causal reported but without gradient.
    z = z_f.clone().requires_grad_()
    out = cft_loss(z, z_c, y, ones, alpha=0.0)
    assert out.loss.item() == pytest.approx(sft.loss.item(), abs=1e-6)
    assert out.causal.item() > 0 and not out.causal.requires_grad


def test_weight_causal_only_leaves_normal_term_unweighted():
    g = torch.Generator().manual_seed(2)
    z_f, z_c = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    w = torch.linspace(1.0, 0.25, 6)
    out = cft_loss(z_f, z_c, y, w, alpha=0.1, weight_causal_only=True)
    assert out.normal.item() == pytest.approx(F.cross_entropy(z_f, y).item(), abs=1e-6)
    ce_e = F.cross_entropy(z_f - z_c, y, reduction="none")
    assert out.causal.item() == pytest.approx(((w * ce_e).sum() / w.sum()).item(), abs=1e-6)


def test_empty_batch_is_zero_not_nan():
    z = torch.zeros(0, 4, requires_grad=True)
    out = cft_loss(z, z, torch.zeros(0, dtype=torch.long), torch.zeros(0), alpha=0.1)
    assert out.loss.item() == 0.0
    out.loss.backward()


# ------------------------------------------------------ model-level step vs reference


def _batch(tokenizer, records, padding_side):
    collate = PairedCollator(tokenizer, PromptBuilder.for_domain("movies"), padding_side=padding_side)
    return collate(records)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_step_equals_reference(model, batch, **options) -> dict[str, torch.Tensor]:
    """compute_cft_loss == reference_cft_loss (alpha 0.3, beta 0.25, `options` to both) on
    `batch`: the loss, both terms, the label count and every parameter's gradient. Returns the
    gradients (by parameter name)."""
    ours = compute_cft_loss(model, batch, alpha=0.3, beta=0.25, **options)
    ours.loss.backward()
    g_ours = _grads(model)
    model.zero_grad()
    ref = reference_cft_loss(model, batch, alpha=0.3, beta=0.25, **options)
    ref.loss.backward()
    g_ref = _grads(model)
    model.zero_grad()
    for name in ("loss", "normal", "causal"):
        assert getattr(ours, name).item() == pytest.approx(getattr(ref, name).item(), abs=1e-5), name
    assert ours.num_tokens == ref.num_tokens
    assert g_ours.keys() == g_ref.keys() and len(g_ref) > 0
    for name in g_ref:
        torch.testing.assert_close(g_ours[name], g_ref[name], atol=1e-5, rtol=1e-4, msg=name)
    return g_ours


@pytest.mark.parametrize(("arch", "padding_side", "weight_causal_only"), [
    *[(arch, side, causal_only) for arch in ("llama", "qwen2") for side in ("right", "left") for causal_only in (False, True)],
    # Logits transformed after the head (output_logits): the transform is all these add.
    *[(arch, "left", False) for arch in TINY_ARCHITECTURES if arch not in ("llama", "qwen2")],
])
def test_step_matches_reference(tiny_tokenizer, arch, padding_side, weight_causal_only):
    records = make_records(5, seed=3)  # histories of 1, 4, 7, 10 and 3 titles
    # A row whose title is a single token: its label tokens are title, quote, EOS.
    # ("M", Fritz Lang 1931, is in MovieLens; one byte is one token under byte-level BPE.)
    assert len(tiny_tokenizer("M", add_special_tokens=False)["input_ids"]) == 1
    records.append({"history_titles": ["Toy Story"], "target_title": "M"})
    batch = _batch(tiny_tokenizer, records, padding_side)
    model = build_tiny_model(len(tiny_tokenizer), arch=arch, seed=7)
    grads = assert_step_equals_reference(model, batch, weight_causal_only=weight_causal_only)
    assert len(grads) == len(list(model.parameters()))  # every parameter gets a gradient


def test_row_with_a_single_label_token(tiny_tokenizer):
    # Hand-made: row 1 has exactly one label (EOS), so its weight is 1 (n = 1 case).
    batch = _batch(tiny_tokenizer, make_records(2, seed=4), "right")
    for key in ("labels", "cf_labels"):
        lab = batch[key][1]
        idx = (lab != IGNORE_INDEX).nonzero().flatten()
        lab[idx[:-1]] = IGNORE_INDEX
    model = build_tiny_model(len(tiny_tokenizer), seed=1)
    ours = compute_cft_loss(model, batch, alpha=0.1, beta=0.25)
    ref = reference_cft_loss(model, batch, alpha=0.1, beta=0.25)
    assert ours.loss.item() == pytest.approx(ref.loss.item(), abs=1e-5)


def test_padding_side_does_not_change_the_loss(tiny_tokenizer):
    records = make_records(4, seed=5)
    model = build_tiny_model(len(tiny_tokenizer), seed=2)
    right = compute_cft_loss(model, _batch(tiny_tokenizer, records, "right"), 0.1, 0.25)
    left = compute_cft_loss(model, _batch(tiny_tokenizer, records, "left"), 0.1, 0.25)
    assert right.loss.item() == pytest.approx(left.loss.item(), abs=1e-5)


def test_sft_special_case_equals_transformers_loss(tiny_tokenizer):
    """alpha = 0, beta = 1 is plain SFT: the mean CE over label tokens that HF computes."""
    batch = _batch(tiny_tokenizer, make_records(4, seed=6), "right")
    model = build_tiny_model(len(tiny_tokenizer), seed=3)
    ours = compute_cft_loss(model, batch, alpha=0.0, beta=1.0)
    hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert ours.loss.item() == pytest.approx(hf.item(), abs=1e-5)


def test_step_applies_the_head_to_label_rows_only(tiny_tokenizer):
    batch = _batch(tiny_tokenizer, make_records(4, seed=7), "right")
    model = build_tiny_model(len(tiny_tokenizer), seed=4)
    head_rows = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda m, inp, out: head_rows.append(inp[0].reshape(-1, inp[0].shape[-1]).shape[0])
    )
    out = compute_cft_loss(model, batch, alpha=0.1, beta=0.25)
    hook.remove()
    b = batch["input_ids"].shape[0]
    # The factual prompts' shared start runs once (1 row), the rest of the factual half keeps one
    # position per row (B rows), the packed counterfactual call one per pack (1 pack), and one
    # head call covers the 2N label rows; never B x T rows.
    assert sorted(head_rows) == sorted([1, b, 1, 2 * out.num_tokens])
    assert 2 * out.num_tokens < batch["input_ids"].numel()


def test_accumulation_window_gradient_invariance(tiny_tokenizer):
    """4 examples as one micro-batch == 4 micro-batches of 1, normalised by the window weight."""
    records = make_records(4, seed=8)
    collate = PairedCollator(tiny_tokenizer, PromptBuilder.for_domain("movies"))

    def accumulated_grads(micro_batches):
        model = build_tiny_model(len(tiny_tokenizer), seed=5)
        z, z_tok = window_normalizers(micro_batches, beta=0.25)
        for mb in micro_batches:
            compute_cft_loss(model, mb, 0.1, 0.25, normalizer=z, token_normalizer=z_tok).loss.backward()
        return _grads(model)

    g_one = accumulated_grads([collate(records)])
    g_four = accumulated_grads([collate([r]) for r in records])
    for name in g_one:
        torch.testing.assert_close(g_one[name], g_four[name], atol=1e-6, rtol=1e-5, msg=name)


def test_naive_benchmark_baseline_computes_the_same_loss(tiny_tokenizer):
    """The benchmarks' naive step (the reference's layout) is a correct CFT loss."""
    from cft_core.reference import naive_cft_loss, pad_counterfactual_to_factual

    batch = _batch(tiny_tokenizer, make_records(4, seed=9), "right")
    model = build_tiny_model(len(tiny_tokenizer), seed=6)
    padded = pad_counterfactual_to_factual(batch, tiny_tokenizer.pad_token_id)
    assert padded["cf_input_ids"].shape == batch["input_ids"].shape
    naive = naive_cft_loss(model, padded, 0.1, 0.25)
    ref = reference_cft_loss(model, batch, 0.1, 0.25)
    assert naive.loss.item() == pytest.approx(ref.loss.item(), abs=1e-5)


def test_the_factual_prompts_shared_start_runs_once(tiny_tokenizer):
    """The factual half's common start (preamble, instruction, history introduction) runs once as
    a batch of 1 and the rows run only their own tokens; switched off, every row runs whole. Both
    give the same loss (and test_step_matches_reference checks the gradients of the default)."""
    batch = _batch(tiny_tokenizer, make_records(4, seed=5), "right")
    model = build_tiny_model(len(tiny_tokenizer), seed=6)
    widths: list[tuple] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: widths.append(tuple(a[0].shape)))
    try:
        shared = compute_cft_loss(model, batch, 0.1, 0.25, pack_counterfactual=False)
        shared_widths, widths[:] = list(widths), []
        whole = compute_cft_loss(model, batch, 0.1, 0.25, pack_counterfactual=False, share_factual_prefix=False)
    finally:
        hook.remove()
    b, t = batch["input_ids"].shape
    start = shared_widths[0][1]
    assert shared_widths[0] == (1, start) and start > 10
    assert shared_widths[1] == (b, t - start)  # right-aligned rows after the start: T - start columns
    assert widths[0] == (b, t)
    assert shared.loss.item() == pytest.approx(whole.loss.item(), abs=1e-6)


def test_gradient_checkpointing_runs_every_factual_row_whole(tiny_tokenizer):
    """Checkpointed layers drop a passed key/value cache: the shared start is then not reused (or
    the rows would silently not see it), and the loss is the unshared one."""
    batch = _batch(tiny_tokenizer, make_records(4, seed=5), "right")
    model = build_tiny_model(len(tiny_tokenizer), seed=6)
    expected = compute_cft_loss(model, batch, 0.1, 0.25, share_factual_prefix=False).loss.item()
    # The new name first: transformers 5.2x deprecates gradient_checkpointing_enable.
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.train()
    widths: list[tuple] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: widths.append(tuple(a[0].shape)))
    try:
        got = compute_cft_loss(model, batch, 0.1, 0.25)
    finally:
        hook.remove()
    assert widths[0] == tuple(batch["input_ids"].shape)  # no batch-of-1 pass of a shared start
    assert got.loss.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("model_type", sorted(set(TABLE_ONLY_TYPES + MULTIMODAL_TYPES)))
def test_step_matches_reference_on_each_table_type(tiny_tokenizer, model_type):
    """The step applies the model type's post-head transform (POST_HEAD_TRANSFORMS) as the model's
    own forward does: equal to the reference from the model's full logits, values and gradients.
    Also the multimodal classes (their image towers take no part in a text step)."""
    batch = _batch(tiny_tokenizer, make_records(4, seed=3), "left")
    assert_step_equals_reference(tiny_model_of_type(model_type, len(tiny_tokenizer)), batch)


def test_the_check_passes_every_model_whose_logits_the_loss_reproduces(tiny_tokenizer):
    """Every architecture the kernel trains passes the check, those that transform their logits
    after the head included (each entry of POST_HEAD_TRANSFORMS has a tiny model here), and the
    multimodal classes (Gemma-3's caps nothing though its text config sets a cap: the table is
    keyed by the class's own type); and the transform matters: the head alone differs from the
    model's logits on those."""
    from cft_core.loss import check_model_supported
    from cft_core.modeling import POST_HEAD_TRANSFORMS, output_head, output_logits

    batch = _batch(tiny_tokenizer, make_records(3, seed=1), "left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    models = {arch: build_tiny_model(len(tiny_tokenizer), arch=arch) for arch in TINY_ARCHITECTURES}
    models.update({t: tiny_model_of_type(t, len(tiny_tokenizer)) for t in TABLE_ONLY_TYPES + MULTIMODAL_TYPES})
    assert set(POST_HEAD_TRANSFORMS) <= {m.config.model_type for m in models.values()}
    for name, model in models.items():
        check_model_supported(model, ids, mask)
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][:, -1]
        transformed = model.config.model_type in POST_HEAD_TRANSFORMS
        head_alone_differs = not torch.allclose(output_head(model)(hidden), output_logits(model)(hidden))
        assert head_alone_differs == transformed, name


def test_a_model_whose_logits_the_loss_cannot_reproduce_is_refused(tiny_tokenizer, monkeypatch):
    """HyperCLOVA X multiplies its logits by `logits_scaling` after the head (Granite divides by a
    field of that name): without its entry in POST_HEAD_TRANSFORMS it is refused, naming its type;
    with the entry it passes; so the check, not the table, is what guards a type."""
    from cft_core import modeling
    from cft_core.loss import UnsupportedModelError, check_model_supported

    batch = _batch(tiny_tokenizer, make_records(3, seed=1), "left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    model = tiny_model_of_type("hyperclovax", len(tiny_tokenizer))
    check_model_supported(model, ids, mask)
    monkeypatch.delitem(modeling.POST_HEAD_TRANSFORMS, "hyperclovax")
    with pytest.raises(UnsupportedModelError, match="model type 'hyperclovax' computes its logits .* gemma2"):
        check_model_supported(model, ids, mask)


def test_a_model_whose_hidden_states_are_not_per_token_is_refused(tiny_tokenizer):
    """Gemma-3n's hidden states hold several streams ([streams, B, T, D]), so the loss cannot read
    a label token's final state from them: refused with the shape, not a shape error."""
    import transformers as hf

    from cft_core.loss import UnsupportedModelError, check_model_supported

    batch = _batch(tiny_tokenizer, make_records(3, seed=1), "left")
    vocab = len(tiny_tokenizer)
    torch.manual_seed(0)
    model = hf.Gemma3nForCausalLM(hf.Gemma3nTextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, layer_types=["sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=2, hidden_size_per_layer_input=8, vocab_size_per_layer_input=vocab, laurel_rank=4,
        activation_sparsity_pattern=[0.0] * 4, altup_num_inputs=2, attn_implementation="eager")).float()
    with pytest.raises(UnsupportedModelError, match=r"'gemma3n_text' has a last hidden state of shape \(2, 3, "):
        check_model_supported(model, batch["input_ids"], batch["attention_mask"])


def test_a_window_shorter_than_the_rows_runs_them_whole(tiny_tokenizer):
    """A model whose attention window (16 columns) is shorter than the prompts: the factual rows'
    shared start and the counterfactual packs would put padding or other rows inside the window,
    so the step runs each row whole, and matches the reference (values and gradients)."""
    batch = _batch(tiny_tokenizer, make_records(4, seed=5), "left")
    assert_step_equals_reference(build_tiny_model(len(tiny_tokenizer), arch="gemma2", sliding_window=16, seed=2), batch)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
@pytest.mark.parametrize("mode", ["bf16 weights", "mixed precision"])
def test_the_step_in_bf16_matches_the_fp32_reference(tiny_tokenizer, kernel, mode):
    """bf16 as a GPU runs it, on the CPU: the weights in bf16 (as DeepSpeed runs the module), or
    fp32 weights with the forward under autocast and its outputs returned fp32 (as accelerate
    wraps it for the Trainer's `bf16=True`, the head then called outside); both halves with their
    shared start and packs, attention eager (additive mask) or SDPA (bool mask). The loss is the
    fp32 reference's to bf16's rounding and the gradients point the same way."""
    from accelerate.utils import convert_outputs_to_fp32

    batch = _batch(tiny_tokenizer, make_records(6, seed=3), "left")

    def step(dtype_mode):
        model = build_tiny_model(len(tiny_tokenizer), seed=7)
        model.set_attn_implementation(kernel)
        if dtype_mode == "bf16 weights":
            model = model.to(torch.bfloat16)
        elif dtype_mode == "mixed precision":
            model.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=torch.bfloat16)(model.forward))
        out = compute_cft_loss(model, batch, alpha=0.3, beta=0.25)
        out.loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
        return out, grads

    ref, ref_grads = step("fp32")
    out, grads = step(mode)
    # Measured here: within 1e-5 of fp32 (the tiny model's losses are near log V, where bf16's
    # rounding of the activations hardly shows); cross-entropy taken in bf16 instead of fp32
    # (the kernel's upcast left out) is off by 1e-4 to 6e-4.
    for name in ("loss", "normal", "causal"):
        assert getattr(out, name).item() == pytest.approx(getattr(ref, name).item(), rel=1e-4), name
    assert F.cosine_similarity(grads, ref_grads, dim=0) > 0.999
