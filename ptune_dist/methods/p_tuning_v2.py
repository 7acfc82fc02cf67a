"""P-tuning v2 (Liu et al. 2022): deep prefixes learned directly (the MLP is optional), with task heads.

Same prefix mechanics as prefix tuning; what differs is the default (no reparameterisation) and the
recipe it comes with: a sequence- or token-classification head on the encoder (tasks.*.scoring=head).
It exports as PEFT's PREFIX_TUNING, which imports back as prefix tuning.
"""

from __future__ import annotations

from .prefix_tuning import DeepPrefix


class PTuningV2(DeepPrefix):
    name = "p_tuning_v2"
    default_projection = False
