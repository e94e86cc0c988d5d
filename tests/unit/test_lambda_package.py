"""The Lambda package carries the service modules its handler imports, whichever zipper built
it, and the template's event invoke configuration is what the local cloud applies."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from infra.package import lambda_zip as package_lambda
from infra.template import (
    PARAMS_DIR,
    STACK_PATH,
    load_parameter_file,
    load_template,
    make_context,
    pseudo_parameters,
)
from localcloud.deploy import event_invoke_configs
from service.batch_contract import LAMBDA_MODULES
from tests.worker_fixtures import load_script

REPO = Path(__file__).resolve().parents[2]
promote = load_script("promote")


def test_both_zippers_carry_the_handler_and_the_shared_modules() -> None:
    local = zipfile.ZipFile(io.BytesIO(package_lambda(REPO / "lambda"))).namelist()
    aws = zipfile.ZipFile(io.BytesIO(promote.lambda_zip(REPO / "lambda"))).namelist()
    assert sorted(local) == sorted(aws)
    assert {"handler.py", *LAMBDA_MODULES} <= set(local)


def test_the_handler_imports_from_its_package_alone(tmp_path: Path) -> None:
    """As the Lambda runtime loads it: the package's folder on the path, nothing else of
    the repository (no PYTHONPATH)."""
    zipfile.ZipFile(io.BytesIO(package_lambda(REPO / "lambda"))).extractall(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import sys; sys.path.insert(0, '.'); import handler; print(handler.__file__)"
    done = subprocess.run(
        [sys.executable, "-P", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "handler.py")


def test_the_event_invoke_configuration_resolves_to_the_api_call() -> None:
    template = load_template(STACK_PATH)
    given = load_parameter_file(PARAMS_DIR / "local.json")
    physical = {name: f"{name}-id" for name in template["Resources"]}
    arn = "arn:aws:sqs:us-east-1:123456789012:stack-trigger-failures"
    context = make_context(
        template,
        given,
        pseudo_parameters("stack"),
        physical,
        attributes={"TriggerFailureQueue.Arn": arn},
    )
    assert event_invoke_configs(template, context) == [
        {
            "FunctionName": "BatchTriggerFunction-id",
            "Qualifier": "$LATEST",
            "MaximumRetryAttempts": 2,
            "MaximumEventAgeInSeconds": 3600,
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
        }
    ]


def imported(path: Path) -> set[str]:
    """Every module a file imports, by full dotted name (``from service import x`` gives
    ``service.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "service":
                names.update(f"service.{alias.name}" for alias in node.names)
    return names


def test_the_package_imports_only_the_standard_library_boto3_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | {"boto3", "botocore", "service", "__future__"}
    files = [REPO / "lambda" / "handler.py", *(REPO / name for name in LAMBDA_MODULES)]
    names = {name for path in files for name in imported(path)}
    assert {name for name in names if name.split(".")[0] not in allowed} == set()
    carried = {name.removesuffix(".py").replace("/", ".") for name in LAMBDA_MODULES}
    used = {name for name in names if name.startswith("service.")}
    assert used <= carried, "the handler imports a service module the package lacks"
