"""Test-wide settings."""

import os

# The test models are tiny: one intra-op thread is as fast as two and does not collapse when the
# machine is busy (OpenMP threads spin-wait). Must be set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_finish(session) -> None:
    """Start Label Studio now when a test needs it: its database migrations then run beside the
    tests before it instead of in front of it (tests/label_studio_server.py)."""
    import importlib.util

    wanted = any(item.get_closest_marker("labelstudio") for item in session.items)
    if wanted and importlib.util.find_spec("label_studio") is not None:
        from label_studio_server import start

        start()
