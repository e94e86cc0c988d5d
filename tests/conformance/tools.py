"""The outside clients the conformance suite drives, each in its own virtual environment.

Their pins clash with ours (awscli pins an exact, older botocore; MLflow brings its own
world), so each gets a venv made once from a pinned requirements file and kept under
.cache/conformance/, named by the file's hash: a changed pin makes a new venv.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.support import make_venv

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CONFORMANCE_CACHE", REPO / ".cache" / "conformance"))
AWSCLI_REQUIREMENTS = Path(__file__).with_name("requirements-awscli.txt")
MLFLOW_REQUIREMENTS = REPO / "bench" / "requirements-mlflow.txt"


def venv(requirements: Path, name: str) -> Path:
    """The venv's bin folder, created and filled from `requirements` when missing."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    folder = CACHE / f"{name}-{digest}"
    done = folder / ".installed"
    if not done.exists():
        make_venv(folder, requirements, "--no-deps")
        done.write_text(str(requirements))
    return folder / "bin"


if __name__ == "__main__":
    for path, label in ((AWSCLI_REQUIREMENTS, "awscli"), (MLFLOW_REQUIREMENTS, "mlflow")):
        print(venv(path, label))
