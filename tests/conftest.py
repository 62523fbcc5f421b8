"""Test-wide settings."""

import os

# The test models are tiny: one intra-op thread is as fast as two and does not collapse when the
# machine is busy (OpenMP threads spin-wait). Must be set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
