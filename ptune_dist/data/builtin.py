"""Built-in tasks generated on the fly (no download): `builtin:<name>` as a task's train/eval source.

`support`: customer-support messages to route to one of four teams (billing, shipping, technical,
account). With the bare quickstart template (the message, then the answer slot, no instruction)
the untuned SmolLM2-135M scores at chance; a 20-token soft prompt learns the task in a few CPU
minutes. The validation and test messages use sentence patterns that training never shows, so
the score measures the learned task rather than memorised sentences.
"""

from __future__ import annotations

import random

from ptune_dist.errors import DataError

PRODUCTS = [
    "laptop",
    "phone",
    "headphones",
    "blender",
    "camera",
    "printer",
    "tablet",
    "smartwatch",
    "router",
    "monitor",
    "speaker",
    "keyboard",
    "vacuum cleaner",
    "coffee machine",
    "e-reader",
]
# per intent: patterns 0-6 are for training, 7-8 for validation, 9 for test
PATTERNS = {
    "billing": [
        "I was charged twice for my {p} order.",
        "Why is there an extra fee on my invoice for the {p}?",
        "Can I get a refund for the {p}? The payment went through twice.",
        "My credit card was billed {n} dollars more than the price of the {p}.",
        "Please send me a receipt for the {p} I paid for last week.",
        "The discount code did not apply when I paid for the {p}.",
        "I cancelled the {p} order but the money was never returned.",
        "The price I paid for the {p} is higher than the one on your website.",
        "Could you split the payment for the {p} into {n} monthly instalments?",
        "My bank statement shows a charge for a {p} I never bought.",
    ],
    "shipping": [
        "My {p} still has not arrived after {n} days.",
        "Where is my package? The tracking number for the {p} shows nothing.",
        "The courier left the {p} at the wrong address.",
        "Can you deliver the {p} to my office instead of my home?",
        "The box with my {p} arrived crushed and late.",
        "How long does delivery of a {p} take to Canada?",
        "The {p} was marked as delivered but nothing is at my door.",
        "Is express delivery available for the {p}? I need it in {n} days.",
        "The parcel with the {p} has been stuck at the depot for a week.",
        "I would like to change the delivery date of my {p}.",
    ],
    "technical": [
        "My {p} will not turn on after the update.",
        "The {p} keeps disconnecting from wifi every {n} minutes.",
        "The screen of my {p} flickers when I open an app.",
        "How do I reset the {p} to factory settings?",
        "The battery of the {p} drains in {n} hours.",
        "My {p} makes a strange noise and then freezes.",
        "The {p} shows an error code whenever I start it.",
        "After {n} days the {p} stopped pairing with my other devices.",
        "The firmware of my {p} fails to install.",
        "My {p} gets very hot and shuts itself down.",
    ],
    "account": [
        "I forgot the password to my account and cannot log in.",
        "How do I change the email address on my profile?",
        "Please delete my account and all my data.",
        "I cannot verify my account; the code never arrives.",
        "Someone else logged into my account from another country.",
        "How do I add a second user to my account?",
        "My username was changed without my permission.",
        "I would like to merge my {n} old accounts into one.",
        "The two-factor login keeps rejecting my codes.",
        "How can I download a copy of the personal data on my profile?",
    ],
}
SPLITS = {"train": (range(0, 7), 400, 1), "validation": (range(7, 9), 200, 2), "test": (range(9, 10), 100, 3)}


def support(split: str) -> list[dict]:
    patterns, size, seed = SPLITS[split]
    rng = random.Random(seed)
    rows = []
    for _ in range(size):
        label = rng.choice(sorted(PATTERNS))
        text = PATTERNS[label][rng.choice(patterns)].format(p=rng.choice(PRODUCTS), n=rng.randint(2, 30))
        rows.append({"text": text, "label": label})
    return rows


GENERATORS = {"support": support}


def generate(name: str, split: str, key: str) -> list[dict]:
    if name not in GENERATORS:
        raise DataError(f"{key}: unknown built-in dataset {name!r}; known: {sorted(GENERATORS)}")
    if split not in SPLITS:
        raise DataError(f"{key}: built-in dataset {name!r} has splits {sorted(SPLITS)}, not {split!r}")
    return GENERATORS[name](split)
