"""SimpleITK on one thread inside a block: its filters and metrics sum per thread, so results depend on the count."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import SimpleITK as sitk

_THREAD_COUNT = threading.RLock()  # held while a block changes SimpleITK's process-wide count; re-entrant for nesting


@contextmanager
def single_threaded_simpleitk() -> Iterator[None]:
    """Run SimpleITK single-threaded inside the block, then restore the process-wide count. Blocks in other threads
    wait, so concurrent callers never see each other's setting."""
    with _THREAD_COUNT:
        previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
