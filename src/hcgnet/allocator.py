"""Handing freed memory back to the system, so that the resident memory of a run follows what it uses.

glibc's malloc serves large blocks with their own memory mappings only above a threshold that it raises
whenever such a block is freed (up to 32 MiB on 64-bit systems), and it keeps freed heap memory unless the top
of the heap is free. After a few training steps, a network's activations of a few MiB each come from the heap,
and what recomputation frees (the memory-efficient path) stays resident: HCGNet-A2's memory-efficient training
at batch 64 peaked at 2.4 GB resident with glibc's defaults and at 1.6 GB with the thresholds fixed at 1 MiB, at
the same speed (BENCHMARKS.md). PyTorch's CPU allocator calls malloc, so the setting reaches every tensor.

Other training runs want the opposite (:func:`keep_freed_memory`): with the adaptive thresholds, a compiled
HCGNet-A1 bf16 step gave back and took again about 170 MB every step (43,000 page faults); kept, it ran 8% faster.
"""
import ctypes
import ctypes.util
from typing import Optional

#: mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks of this many bytes or more get their own mapping, returned to the system when freed.
DEFAULT_THRESHOLD = 1 << 20
#: glibc's largest mapping threshold on 64-bit systems (mallopt refuses more), and the largest trimming one.
_MMAP_THRESHOLD_MAX, _TRIM_THRESHOLD_MAX = 32 << 20, (1 << 31) - 1


def _libc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def return_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc malloc's mapping and trimming thresholds at ``threshold`` bytes for the rest of the process
    (they stop adapting), so freed blocks of that size or more go back to the system. Returns False where the
    C library has no ``mallopt`` (not glibc: musl, macOS, Windows), which changes nothing."""
    return _fix_thresholds(int(threshold), int(threshold))


def keep_freed_memory() -> bool:
    """Fix glibc malloc's thresholds so that freed memory stays with the process for the next step: blocks up to
    32 MiB come from the heap, and the heap is trimmed only past 2 GiB free at its top. Resident memory stays at
    the run's peak instead of following the live tensors (the peak itself does not change). Returns False where
    the C library has no ``mallopt``, which changes nothing."""
    return _fix_thresholds(_MMAP_THRESHOLD_MAX, _TRIM_THRESHOLD_MAX)


def for_training(memory_efficient: bool) -> Optional[str]:
    """The setting ``hcgnet train`` runs with: freed memory returned to the system for a memory-efficient network
    (what recomputation frees would otherwise stay resident), kept for the next step otherwise. Returns which one
    took effect, ``"returned"`` or ``"kept"``, or None where the C library has no ``mallopt``."""
    if memory_efficient:
        return "returned" if return_freed_memory() else None
    return "kept" if keep_freed_memory() else None


def _fix_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mapping and trimming thresholds (fixed from then on); False without ``mallopt``."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                       trim_threshold))
