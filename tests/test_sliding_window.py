"""Sliding-window models (Gemma 3's local layers) run through ptune's prefix attention while every key lies
within the window, where sliding and full attention are the same; past it the call is refused by name rather
than computed as full attention. A tiny random Gemma 3 against transformers' own eager attention."""

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from ptune_dist.errors import ConfigError
from ptune_dist.model.attention import register


def tiny(attn):
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        attn_implementation=attn,
    )
    return Gemma3ForCausalLM(config).eval()


def test_within_the_window_it_is_the_model_and_past_it_a_clear_error():
    eager, ours = tiny("eager"), tiny(register())
    ours.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 64, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    with torch.no_grad():
        want, got = eager(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max() < 1e-5
    with pytest.raises(ConfigError, match="exceed the sliding window of 8 tokens.*data.max_length"):
        with torch.no_grad():
            ours(torch.randint(0, 64, (1, 9)))
