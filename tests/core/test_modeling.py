"""Facts read off a model's config: its sliding attention window."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from cft_core.modeling import attention_window


@pytest.mark.parametrize(("model_type", "settings", "window"), [
    ("llama", {}, None),
    ("qwen2", {}, None),  # a window field, but use_sliding_window is off by default
    ("qwen2", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 0}, 64),
    ("mistral", {"sliding_window": 64}, 64),  # every layer windowed (no layer types)
    ("mistral", {"sliding_window": None}, None),  # Mistral v0.2 on
    ("gemma2", {"sliding_window": 64}, 64),  # windowed and full layers alternating
    ("gemma2", {"sliding_window": 64, "layer_types": ["full_attention"] * 2}, None),
])
def test_attention_window_of_each_kind_of_config(model_type, settings, window):
    config = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=16, intermediate_size=32,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                  head_dim=8, **settings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert attention_window(model) == window
