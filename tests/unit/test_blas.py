"""The process's OpenBLAS kernels: AVX2 on a CPU with AVX-512, unless the user chose."""

import os
import platform
import subprocess
import sys

import pytest

from service.blas import CORETYPE, NEEDS, PINNED, cpu_flags, pin_kernels

AVX512 = NEEDS | {"sse4_2", "avx"}
ENTRY = "from service.__main__ import main; main(['settings'])"  # chooses, then prints


def kernels(setup: str, **env: str) -> str:
    """The OpenBLAS kernel set a new process loads with numpy after running `setup`."""
    environ = {k: v for k, v in os.environ.items() if k != CORETYPE} | env
    code = (
        f"{setup}\nimport numpy, threadpoolctl\nprint(*sorted({{i['architecture'] for i in "
        "threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_a_cpu_with_avx512_gets_the_avx2_kernels():
    environ: dict[str, str] = {}
    assert pin_kernels(environ, AVX512, loaded=()) == PINNED
    assert environ == {CORETYPE: PINNED}


@pytest.mark.parametrize(
    ("environ", "flags", "loaded"),
    [
        ({}, AVX512 - {"avx512f"}, ()),  # no AVX-512: OpenBLAS' own choice stands
        ({CORETYPE: "Zen"}, AVX512, ()),  # the user's choice stands
        ({}, AVX512, ("numpy",)),  # too late: this process has its kernels
    ],
)
def test_nothing_is_pinned_when_it_is_not_ours_to_choose(environ, flags, loaded):
    before = dict(environ)
    assert pin_kernels(environ, frozenset(flags), loaded=loaded) is None
    assert environ == before


def test_the_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma avx512f\n")
    x86 = platform.machine().lower() in {"x86_64", "amd64"}
    expected = {"fpu", "sse4_2", "avx2", "fma", "avx512f"} if x86 else set()
    assert cpu_flags(str(info)) == expected
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_the_server_and_the_worker_run_the_kernels_chosen():
    native = kernels("pass")
    expected = PINNED if cpu_flags() >= NEEDS else native
    assert kernels(ENTRY) == expected
    assert kernels(ENTRY, **{CORETYPE: "Nehalem"}) == "Nehalem"
