"""One OpenBLAS kernel family whatever the call's size, so that a row's answer does not
depend on the rows that share its model call (the manifest's row_block).

OpenBLAS' AVX-512 kernels (SkylakeX, Cooperlake, SapphireRapids) take another path for a
larger matrix product: with 64 features and 2 outputs, from about 1,000 rows; with 10
outputs, from about 128. A row then gets other last bits in a big call than alone. Their
AVX2 kernels (Haswell) take one path at every size measured (bench/RESULTS.md). OpenBLAS
reads OPENBLAS_CORETYPE once, when numpy loads it: `python -m service` (the server and the
worker) calls `pin_kernels` before it imports numpy, as must any code that runs the model
in-process and wants the same bits (the bench and the tests do).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Container, MutableMapping

CORETYPE = "OPENBLAS_CORETYPE"
PINNED = "Haswell"  # AVX2 and FMA: every CPU that has AVX-512 has both
NEEDS = frozenset({"avx512f", "avx2", "fma"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux on x86-64); empty elsewhere."""
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return frozenset()
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def pin_kernels(
    environ: MutableMapping[str, str] = os.environ,
    flags: frozenset[str] | None = None,
    loaded: Container[str] = sys.modules,
) -> str | None:
    """Ask OpenBLAS for its AVX2 kernels on a CPU with AVX-512; the kernel set, or None when
    nothing was set: the CPU has no AVX-512, the user chose OPENBLAS_CORETYPE, or numpy is
    loaded already (too late to choose)."""
    if CORETYPE in environ or "numpy" in loaded:
        return None
    if not NEEDS.issubset(cpu_flags() if flags is None else flags):
        return None
    environ[CORETYPE] = PINNED
    return PINNED
