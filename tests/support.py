"""What every suite needs: a free loopback port, waiting on a condition with a deadline
(never sleep-and-hope), and a venv of its own for a tool whose pins clash with ours."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from localcloud.waiting import wait_until

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_for(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.1,
    context: Callable[[], str] = str,
) -> T:
    """The first truthy value of ``condition()``; fail naming ``what`` at the deadline."""
    try:
        return wait_until(condition, timeout, what, interval)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{context()}") from None


def make_venv(folder: Path, requirements: Path, *install_options: str) -> Path:
    """Make `folder` a fresh venv (with pip) holding `requirements`; returns its Python.

    uv (a pinned dev dependency, as tox-uv's installer) fills it in seconds where pip takes a
    minute or more; without uv, pip does.
    """
    python = folder / "bin" / "python"
    try:
        from uv import find_uv_bin
    except ImportError:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
        install = [str(python), "-m", "pip", "install", "-q"]
    else:
        uv = find_uv_bin()
        create = [uv, "venv", "-q", "--clear", "--seed", "--python", sys.executable, str(folder)]
        subprocess.run(create, check=True)
        install = [uv, "pip", "install", "-q", "--python", str(python)]
    subprocess.run([*install, *install_options, "-r", str(requirements)], check=True)
    return python


def extract_flat_tar(archive: Path, folder: Path) -> list[str]:
    """Extract a tar of plain files at its root (what a bundle's model.tar.gz holds), refusing
    any other member; works on every Python 3.11 (extractall's filter came in 3.11.4)."""
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            assert member.isfile() and "/" not in member.name and member.name not in ("..", ".")
            source = tar.extractfile(member)
            assert source is not None
            (folder / member.name).write_bytes(source.read())
            names.append(member.name)
    return names
