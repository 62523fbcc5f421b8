"""Reading pool rows fast: ids merged into contiguous blocks (h5py reads blocks at GB/s but
fancy indexing at a few thousand rows per second), and reading ahead on a thread."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

# Reads closer together than this many rows are merged into one contiguous read: h5py reads
# contiguous blocks at GB/s but fancy indexing at a few thousand rows per second.
MERGE_GAP = 16
MAX_BLOCK_ROWS = 4096


def contiguous_runs(sorted_ids: np.ndarray) -> Iterator[tuple[int, int]]:
    """Split sorted ids into index ranges ``[a, b)`` that are each read as one contiguous block
    (ids closer than ``MERGE_GAP`` merged, at most ``MAX_BLOCK_ROWS`` rows per block)."""
    n = sorted_ids.size
    if n == 0:
        return
    breaks = np.flatnonzero(np.diff(sorted_ids) > MERGE_GAP) + 1
    edges = [0, *breaks.tolist(), n]
    for a, b in itertools.pairwise(edges):
        # cap the rows per read so memory stays bounded for long dense runs
        while a < b:
            lo = sorted_ids[a]
            c = a + int(np.searchsorted(sorted_ids[a:b], lo + MAX_BLOCK_ROWS, side="left"))
            c = max(c, a + 1)
            yield a, c
            a = c


def read_ahead(
    batches: Iterator[np.ndarray], read: Any, depth: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Run ``read`` over ``batches`` on a background thread, ``depth`` batches ahead."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put((b, read(b)))
            q.put(done)
        except BaseException as e:  # handed to the consumer, re-raised there
            q.put(e)

    t = threading.Thread(target=work, name="dgaal-pool-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)
