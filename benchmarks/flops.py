"""FLOPs of one training step and model FLOPs utilisation (MFU) for the benchmarks.

The FLOPs a step needs are counted, not estimated: torch's `FlopCounterMode` records every matrix
product and attention call of the forward and the backward pass as they run, so what the CFT
step skips (the counterfactual prompt packed and run once, the factual prompts' common start run
once, logits for label rows only) is not counted, and what the naive step wastes (full [B, T, V]
logits) is. The optimizer's element-wise update is not counted (a few FLOPs per parameter,
against six per parameter and token in the products). For a dense decoder the count is the
usual 6 N T (Kaplan et al., 2020, sec. 2.1: forward 2 N T, backward 4 N T) plus attention's
12 L T^2 d-type terms; tests/bench/test_flops.py checks it against that formula.

    MFU = counted FLOPs of one step / median step time / the device's peak (dense, the dtype's)

PaLM (Chowdhery et al., 2022, appendix B) defines MFU with the FLOPs the model needs rather than
those a particular implementation runs; here the CFT step runs only what it needs, and a
variant that runs more (naive) is charged for it, so compare variants by time, and MFU as how
well the device is used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

# Dense peak TFLOP/s per device and dtype, from the vendors' data sheets (no sparsity). Matched
# against torch.cuda.get_device_name; --peak-tflops gives any other device's.
PEAK_TFLOPS = {
    ("H200", "bf16"): 989.4, ("H100", "bf16"): 989.4,  # SXM; H100 PCIe is 756
    ("A100", "bf16"): 312.0, ("L4", "bf16"): 121.0, ("A10G", "bf16"): 70.0,
    ("H200", "fp32"): 67.0, ("H100", "fp32"): 67.0, ("A100", "fp32"): 19.5,
}


def peak_tflops(device: str, dtype: str, override: float | None = None) -> float | None:
    """The device's dense peak for `dtype` in TFLOP/s: `override` when given, the data-sheet value
    of a known CUDA device, else None (a CPU's peak depends on its cores and clocks: pass it)."""
    if override is not None:
        return override
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    if "PCIe" in name and "H100" in name and dtype == "bf16":
        return 756.0
    for (model, kind), value in PEAK_TFLOPS.items():
        if model in name and kind == dtype:
            return value
    return None


def _attention_flops(q_shape, k_shape, v_shape) -> int:
    """Q K^T and P V of one attention call: 2 b h_q s_q s_k (d + d_v) (grouped-query attention's
    key/value heads are broadcast to the query heads; each query head does the full work)."""
    b, h_q, s_q, d = q_shape
    s_k, d_v = k_shape[2], v_shape[3]
    return 2 * b * h_q * s_q * s_k * (d + d_v)


# PyTorch counts its CUDA attention kernels but not the CPU one SDPA runs on here: give it the
# same formula (the backward runs four products of the forward's size: twice its FLOPs).
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return 2 * _attention_flops(query_shape, key_shape, value_shape)


def count_flops(step: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """(FLOPs of one call of `step`, forward and backward included when it runs both; those FLOPs
    by operator, e.g. {"aten.mm": ..., "aten._scaled_dot_product_efficient_attention": ...}: which
    attention kernel ran). Kernels outside aten (the flash_attn package's) are not counted."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op
