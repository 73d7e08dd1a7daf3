"""Host-side tuning for CPU training: keep large tensors in glibc's heap.

glibc serves every allocation above its mmap threshold (dynamic, at most 32 MiB) with a fresh
``mmap`` and returns it with ``munmap``, so the activations of a training step are page-faulted
in anew at every step. An adversarial step allocates the same large buffers K + 2 times; on a
2-core CPU the page faults cost up to a third of the step (benchmarks/README.md, bench_step).
Raising the mmap and trim thresholds keeps those buffers in the heap for reuse, the effect of
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295``.
"""
import ctypes
import ctypes.util
import logging

log = logging.getLogger("fastnofrost")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
LARGE = 2**31 - 1  # mallopt takes an int


def keep_large_buffers() -> bool:
    """Raise glibc's mmap/trim thresholds; False (and a debug line) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_THRESHOLD, LARGE) == 1 and libc.mallopt(M_TRIM_THRESHOLD, LARGE) == 1
    except (OSError, AttributeError, TypeError):
        ok = False
    if not ok:
        log.debug("mallopt unavailable (%s): CPU allocator left as is", name)
    return ok
