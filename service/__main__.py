"""`python -m service serve | worker | settings`: parse arguments and call one function."""

import argparse
import logging
import sys
from pathlib import Path

from service.blas import pin_kernels
from service.errors import SettingsError
from service.settings import (
    ServeSettings,
    WorkerSettings,
    load_settings,
    settings_table,
    with_settings_table,
)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


def _settings(readme: Path | None) -> int:
    if readme is None:
        print(settings_table())
        return 0
    try:
        readme.write_text(with_settings_table(readme.read_text(encoding="utf-8")), "utf-8")
    except (OSError, ValueError) as exc:
        print(f"error: {readme}: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("command", choices=["serve", "worker", "settings"])
    parser.add_argument(
        "--readme", type=Path, help="settings: rewrite the table in this Markdown file instead"
    )
    args = parser.parse_args(argv)
    pin_kernels()  # before anything loads numpy
    if args.command == "settings":
        return _settings(args.readme)
    try:
        settings = load_settings(ServeSettings if args.command == "serve" else WorkerSettings)
    except SettingsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    if args.command == "serve":
        from service.server import run_server

        return run_server(settings)
    from service.worker import run_worker

    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
