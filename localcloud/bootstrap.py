"""Runs Lambda invocations in one interpreter, as the AWS Python runtime does.

Started by ``localcloud.lambda_pool`` as ``python -P bootstrap.py --serve`` with the
function's code folder as the working directory: it reads one request per line on stdin
(``{"info": CONTEXT, "event": BASE64}``), runs the handler, and answers on stdout with a line
holding ``RESULT_MARK`` and the outcome, after the handler's own output. Module globals
persist between invocations, as in a warm execution environment. An init failure (bad
handler name, import error) ends the process, as AWS resets such an environment.
Standard library only: the function's own imports must not see anything of ours.
"""

import base64
import importlib
import json
import os
import sys
import time
import traceback
from typing import Any

RESULT_MARK = "\x1eLOCALCLOUD-RESULT "
INIT_ERRORS = (
    "Runtime.MalformedHandlerName",
    "Runtime.UserCodeSyntaxError",
    "Runtime.ImportModuleError",
    "Runtime.HandlerNotFound",
)


class LambdaContext:
    """The attributes and method of the AWS Python runtime's context object."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.aws_request_id = info["request_id"]
        self.function_name = info["function_name"]
        self.function_version = info["function_version"]
        self.invoked_function_arn = info["invoked_function_arn"]
        self.memory_limit_in_mb = int(info["memory_limit_in_mb"])
        self.log_group_name = info["log_group_name"]
        self.log_stream_name = info["log_stream_name"]
        self.identity = None
        self.client_context = None
        self._deadline_ms = int(info["deadline_ms"])

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


class RuntimeFailure(Exception):
    """A failure of the runtime itself (bad handler name, import error), not of the handler."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def load_handler(spec: str, task_root: str) -> Any:
    """Import ``module.function`` from the code folder, with AWS's error types."""
    if "." not in spec:
        raise RuntimeFailure("Runtime.MalformedHandlerName", f"Bad handler '{spec}'")
    module_name, function_name = spec.rsplit(".", 1)
    module_name = module_name.replace("/", ".")
    sys.path.insert(0, task_root)
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        raise RuntimeFailure(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}"
        ) from exc
    except ImportError as exc:
        raise RuntimeFailure(
            "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}"
        ) from exc
    handler = getattr(module, function_name, None)
    if handler is None:
        raise RuntimeFailure(
            "Runtime.HandlerNotFound",
            f"Handler '{function_name}' missing on module '{module_name}'",
        )
    return handler


def user_frames(exc: BaseException) -> Any:
    """The traceback without this file's frames, as the AWS runtime reports it."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def error_object(exc: BaseException, error_type: str, request_id: str) -> dict[str, Any]:
    frames = traceback.extract_tb(user_frames(exc))
    return {
        "errorMessage": str(exc),
        "errorType": error_type,
        "requestId": request_id,
        "stackTrace": [line.rstrip("\n") for line in traceback.format_list(frames)],
    }


def parse_event(event_bytes: bytes) -> Any:
    try:
        return json.loads(event_bytes or b"{}")
    except ValueError as exc:
        raise RuntimeFailure("Runtime.UnmarshalError", f"Unable to unmarshal input: {exc}") from exc


_handler: Any = None


def current_handler() -> Any:
    """The handler, imported at the first invocation and kept (a warm environment)."""
    global _handler
    if _handler is None:
        _handler = load_handler(os.environ["_HANDLER"], os.environ["LAMBDA_TASK_ROOT"])
    return _handler


def invoke(info: dict[str, Any], event_bytes: bytes) -> dict[str, Any]:
    """Run the handler once; return ``{"ok": ..., "payload"|"error": ...}``."""
    request_id = info["request_id"]
    try:
        handler = current_handler()
        event = parse_event(event_bytes)
    except RuntimeFailure as exc:
        print(f"[ERROR] {exc.error_type}: {exc}", file=sys.stderr)
        return {"ok": False, "error": error_object(exc, exc.error_type, request_id)}
    try:
        result = handler(event, LambdaContext(info))
    except Exception as exc:
        print(f"[ERROR] {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exception(type(exc), exc, user_frames(exc))
        return {"ok": False, "error": error_object(exc, type(exc).__name__, request_id)}
    try:
        payload = json.dumps(result)
    except (TypeError, ValueError) as exc:
        message = f"Unable to marshal response: {exc}"
        failure = RuntimeFailure("Runtime.MarshalError", message)
        return {"ok": False, "error": error_object(failure, failure.error_type, request_id)}
    return {"ok": True, "payload": payload}


def serve() -> int:
    """Answer requests from stdin until it closes; the handler sees /dev/null as stdin."""
    requests = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for line in requests:
        request = json.loads(line)
        outcome = invoke(request["info"], base64.b64decode(request["event"]))
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write((RESULT_MARK + json.dumps(outcome) + "\n").encode("utf-8"))
        answers.flush()
        if outcome.get("error", {}).get("errorType") in INIT_ERRORS:
            return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] != ["--serve"]:
        print(f"usage: {argv[0]} --serve", file=sys.stderr)
        return 2
    return serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
