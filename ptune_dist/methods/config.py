"""The method section of a run config: `MethodConfig` holds the fields every method has; a method whose
module takes more declares its own Config beside its class, extending it (e.g. PTuning.Config adds encoder
and encoder_hidden_size). config/load.py resolves a run's `method:` section by `name` into the class's
Config, so a knob of another method is refused there, naming the key and the methods that have it.

The `init` vocabulary (what fills a prompt's first values; methods/init.py makes them) is defined here, once:
every other module (schema, validate, the study's cells and report) names these constants.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptune_dist.fields import INT32, choice, number, text

RANDOM, VOCAB, TEXT, LABELS = "random", "vocab", "text", "labels"
INITS = (RANDOM, VOCAB, TEXT, LABELS)  # method.init: random uniform | sampled vocabulary | init_text | label words
NEEDS_CLASS_LABELS = (LABELS,)  # inits made of a classification task's label words


@dataclass
class MethodConfig:
    """What every method's section holds (a method without a prompt ignores the prompt's fields)."""

    name: str = "prompt_tuning"  # the registry's key (methods/__init__.py); checked as the section resolves
    num_virtual_tokens: int = number(20, ge=0, most=INT32)  # > 0 for the methods with a prompt (check_config)
    # shallow prompts and the prefix-tuning embedding (INITS)
    init: str = choice(RANDOM, *INITS)
    init_text: str = text()
    init_scale: float = number(0.5, gt=0)  # uniform range for random token embeddings; std for random deep prefixes
