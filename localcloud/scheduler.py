"""Scheduler: fires EventBridge schedule rules at their Lambda targets, as AWS does.

moto records ``AWS::Events::Rule`` resources with a ``ScheduleExpression`` and never fires
them. This component reads the rules from moto's events models and invokes each Lambda
target asynchronously through the Lambda runtime. ``rate(...)`` intervals are multiplied by
``schedule_scale`` (0.1 turns one minute into 6 s); ``cron(...)`` follows the wall clock.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from moto.awslambda.utils import get_backend as lambda_backend
from moto.events.models import Rule, events_backends

from localcloud.console import Console
from localcloud.lambda_runtime import LambdaRuntime
from localcloud.settings import LocalCloudSettings

_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_CRON = re.compile(r"^cron\((.+)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_DAY_NAMES = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}


def rate_seconds(expression: str) -> float | None:
    """Seconds between firings of ``rate(N unit)``; None for anything else."""
    match = _RATE.match(expression.strip())
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")]


@dataclass(frozen=True)
class Cron:
    """EventBridge's six-field cron without L, W and #: minutes hours dom month dow year."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int] | None
    months: frozenset[int]
    weekdays: frozenset[int] | None

    @classmethod
    def parse(cls, expression: str) -> Cron | None:
        match = _CRON.match(expression.strip())
        if match is None:
            return None
        fields = match.group(1).split()
        if len(fields) != 6:
            raise ValueError(f"cron needs 6 fields: {expression}")
        minute, hour, dom, month, dow, _year = fields
        return cls(
            _field(minute, 0, 59),
            _field(hour, 0, 23),
            None if dom in ("?", "*") else _field(dom, 1, 31),
            _field(month, 1, 12),
            None if dow in ("?", "*") else _field(dow.upper(), 1, 7, _DAY_NAMES),
        )

    def next_after(self, moment: datetime) -> datetime:
        """The first matching minute strictly after ``moment`` (UTC)."""
        t = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(500_000):
            if t.month not in self.months:
                t = (t.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
            elif not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0)
            elif t.hour not in self.hours:
                t = (t + timedelta(hours=1)).replace(minute=0)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        raise ValueError("cron expression never fires")

    def _day_matches(self, t: datetime) -> bool:
        if self.days is not None and t.day not in self.days:
            return False
        weekday = (t.isoweekday() % 7) + 1
        return self.weekdays is None or weekday in self.weekdays


def _field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base in ("*", "?"):
            start, end = low, high
        elif "-" in base:
            first, last = base.split("-", 1)
            start, end = _value(first, names), _value(last, names)
        else:
            start = _value(base, names)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    if not values or min(values) < low or max(values) > high:
        raise ValueError(f"cron field out of range: {text}")
    return frozenset(values)


def _value(text: str, names: dict[str, int] | None) -> int:
    return names[text] if names and text in names else int(text)


def scheduled_event(rule: Rule) -> dict[str, Any]:
    """The event AWS sends a target of a schedule rule."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": rule.account_id,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": rule.region_name,
        "resources": [rule.arn],
        "detail": {},
    }


class Scheduler:
    """Start/stop component firing schedule rules found in moto."""

    def __init__(
        self,
        settings: LocalCloudSettings,
        runtime: LambdaRuntime,
        console: Console | None = None,
        tick_seconds: float = 0.2,
    ) -> None:
        self.settings = settings
        self._runtime = runtime
        self._console = console or Console()
        self._tick = tick_seconds
        self._next: dict[tuple[str, str], float] = {}
        self._warned: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self.tick(time.time())
            except Exception as exc:  # one bad rule must not stop the others
                self._console.line("scheduler", f"error: {type(exc).__name__}: {exc}")

    def tick(self, now: float) -> None:
        """Fire every rule whose time has come; the first firing is one period after start."""
        live = set()
        for rule in _schedule_rules():
            key = (rule.arn, rule.scheduled_expression)
            live.add(key)
            if key not in self._next:
                self._next[key] = self._following(rule, now)
            elif now >= self._next[key]:
                self._next[key] = self._following(rule, now)
                self._fire(rule)
        for key in set(self._next) - live:
            del self._next[key]

    def fire_all(self) -> None:
        """Fire every schedule rule now (after a restart queued inputs again)."""
        for rule in _schedule_rules():
            self._fire(rule)

    def _following(self, rule: Rule, now: float) -> float:
        expression = rule.scheduled_expression
        seconds = rate_seconds(expression)
        if seconds is not None:
            return now + seconds * self.settings.schedule_scale
        try:
            cron = Cron.parse(expression)
        except ValueError:
            cron = None
        if cron is None:
            self._warn(rule.arn, f"rule {rule.name}: unsupported schedule {expression!r}")
            return float("inf")
        return cron.next_after(datetime.fromtimestamp(now, UTC)).timestamp()

    def _fire(self, rule: Rule) -> None:
        for target in rule.targets:
            arn = target.get("Arn", "")
            if ":lambda:" not in arn:
                self._warn(arn, f"rule {rule.name}: only Lambda targets fire locally ({arn})")
                continue
            event = target["Input"] if "Input" in target else json.dumps(scheduled_event(rule))
            account, region = arn.split(":")[4], arn.split(":")[3]
            try:
                function = lambda_backend(account, region).get_function(arn)
            except Exception:
                self._warn(arn, f"rule {rule.name}: no function {arn}")
                continue
            self._runtime.invoke_async(function, event.encode("utf-8"))
            self.fired += 1
            self._console.line("scheduler", f"rule {rule.name} fired {function.function_name}")

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._console.line("scheduler", message)


def _schedule_rules() -> Iterator[Rule]:
    for _account, regions in list(events_backends.items()):
        for backend in list(regions.values()):
            for bus in list(backend.event_buses.values()):
                for rule in list(bus.rules.values()):
                    if rule.scheduled_expression and rule.state == "ENABLED":
                        yield rule
