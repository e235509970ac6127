"""The FLOP count behind the training-step benchmark's MFU, against the formula (benchmarks/flops.py)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.flops import count_flops, peak_tflops
from cft_core.tiny import build_tiny_model


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_training_step_counts_six_n_t_plus_attention(attention):
    """Forward: 2 FLOPs per weight of every linear layer (LM head included) and token, plus
    2 s^2 (d + d) per head and layer for Q K^T and P V; the backward pass twice that (the gradients
    of the inputs and of the weights), so the step is three forwards: 6 N T + attention
    (Kaplan et al., 2020, sec. 2.1). SDPA on CPU runs a kernel torch does not count by itself."""
    hidden, layers, heads, vocab, batch, seq = 32, 2, 4, 300, 3, 11
    model = build_tiny_model(vocab, hidden_size=hidden, num_layers=layers, num_heads=heads)
    model.set_attn_implementation(attention)
    ids = torch.randint(0, vocab, (batch, seq))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()

    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head_dim = hidden // heads
    forward = 2 * batch * seq * linear_weights + layers * 2 * batch * heads * seq * seq * (2 * head_dim)
    total, by_op = count_flops(step)
    assert total == 3 * forward and sum(by_op.values()) == total
    attention_ops = {op for op in by_op if "attention" in op}
    assert attention_ops == (set() if attention == "eager" else {  # eager: plain batched products
        "aten._scaled_dot_product_flash_attention_for_cpu", "aten._scaled_dot_product_flash_attention_for_cpu_backward"})


def test_the_peak_is_the_override_or_a_known_gpu_and_none_on_a_cpu():
    assert peak_tflops("cpu", "fp32") is None
    assert peak_tflops("cpu", "bf16", override=1.5) == 1.5
