"""The Lambda package, built one way for the local cloud and for AWS.

A zip of ``lambda/`` with its files at the archive's root, plus the service modules the
handler imports (``service.batch_contract.LAMBDA_MODULES``, at their repository paths),
byte-for-byte reproducible (sorted names, fixed dates and modes), so the same code always
has the same hash: ``promote.py`` names the uploaded key after it and the local cloud's
Lambda runtime keys its code cache by it.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

from service.batch_contract import LAMBDA_MODULES

REPO_ROOT = Path(__file__).resolve().parent.parent

ZIP_DATE = (1980, 1, 1, 0, 0, 0)
EXCLUDED_FROM_ZIP = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")


def zip_members(source: Path) -> list[Path]:
    """The files that go into the package, in archive order."""
    return sorted(
        path
        for path in source.rglob("*")
        if path.is_file()
        and path.suffix != ".pyc"
        and not set(path.relative_to(source).parts) & set(EXCLUDED_FROM_ZIP)
    )


def lambda_zip(
    source: Path, modules: Iterable[str] = LAMBDA_MODULES, root: Path = REPO_ROOT
) -> bytes:
    """The package's bytes: ``source``'s files, and ``modules`` (paths under ``root``)."""
    members = [(path.relative_to(source).as_posix(), path) for path in zip_members(source)]
    members += [(name, root / name) for name in modules]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            executable = path.stat().st_mode & 0o111
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()
