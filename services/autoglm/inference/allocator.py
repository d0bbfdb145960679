"""Keep freed heap memory in the process instead of handing it back to the OS at once.

glibc's malloc returns the freed top of a heap to the OS once more than ``trim_threshold``
bytes are free there (non-main arenas, such as the engine's compute thread's, shrink
their heaps the same way) and serves requests above ``mmap_threshold`` with fresh
mappings. A prompt step of a few thousand tokens frees tens of megabytes of activations,
and the next step asks for them again: every page is then faulted in and zeroed by the
kernel anew. Measured on the 2-vCPU VM (demo model, float32, four 2,800-token prompts in
1,000- and 2,048-token steps on a worker thread): ~27,000 page faults per round of 16
steps with glibc's defaults, 3 with the thresholds raised, and the compute thread's system
time per round 0.07-0.11 s -> 0.025-0.05 s. The price is resident memory: up to
``keep_mb`` of freed heap may stay in the process after a burst of long prompts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory(keep_mb: int) -> bool:
    """Raise glibc's trim threshold to ``keep_mb`` and its mmap threshold to a quarter of
    it (process-wide); whether it was applied (not glibc, or ``keep_mb`` 0: nothing)."""
    if keep_mb <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, (keep_mb << 20) // 4) == 1
        return bool(libc.mallopt(M_TRIM_THRESHOLD, keep_mb << 20) == 1) and ok
    except (OSError, AttributeError) as exc:  # no usable libc: keep the defaults
        log.debug("mallopt unavailable: %s", exc)
        return False
