"""ptune-dist: soft-prompt tuning of frozen Hugging Face models."""

import os

# bf16 matmuls on CPUs that advertise AMX but trap it (this project's CI VMs) kill the process with
# SIGILL; capping oneDNN below AMX avoids it. Must happen before torch is imported; a user's own
# setting wins.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

__version__ = "0.1.0"
