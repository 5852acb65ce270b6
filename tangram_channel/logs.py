"""
Log output under ``twistd``: readable lines (twistd's own) or one JSON object per line.

twistd starts its log observer after ``makeService``, from its own options
(``--logfile``, ``--nodaemon``, ``--syslog``), unless the Application carries an
``ILogObserver`` component. So when JSON, a log level other than the default or a log
file is asked for, the top service sets that component as twistd adds it to the
Application, with an observer writing where twistd itself would have written.
``--syslog`` is left to twistd. Like twistd's own, that observer's log file is rotated
on ``SIGUSR1`` (logrotate's ``postrotate``), which would otherwise end the process, and
each megabyte; unlike twistd's, every file after a rotation keeps the first one's mode.

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``event`` (the
formatted text), ``fields`` (the event's own keys) and, for failures, ``traceback``.
Fields whose names suggest a secret are masked, so no token reaches a log shipper even
if a caller logs one by mistake.

``ThrottledLog`` is for the error paths others can drive: each kind at most once a minute.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from datetime import datetime, timezone
from functools import partial
from typing import IO, Any

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    InvalidLogLevelError,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

from .ratelimit import LogThrottle

_SECRET_WORDS = ("token", "secret", "password", "key")
# keys of legacy (twisted.python.log) events that repeat what the line already says
_NOT_FIELDS = {"format", "message", "time", "system", "isError", "why", "failure"}


def level_named(name: str) -> LogLevel:
    """The LogLevel for a config ``log_level`` (``warning`` is ``warn``)."""
    name = name.lower()
    return LogLevel.levelWithName({"warning": "warn"}.get(name, name))


def _field(name: str, value: Any) -> Any:
    if any(word in name.lower() for word in _SECRET_WORDS):
        return "********"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def json_line(event: dict[str, Any]) -> str:
    """One event as one line of JSON, newline included."""
    level = event.get("log_level", LogLevel.info)
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(timespec="milliseconds"),
        "level": level.name,
        "namespace": event.get("log_namespace", ""),
        "event": formatEvent(event),
        "fields": {
            k: _field(k, v) for k, v in event.items() if not k.startswith("log_") and k not in _NOT_FIELDS
        },
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, default=repr) + "\n"


def read_json_line(line: str) -> tuple[LogLevel, str, str] | None:
    """
    The level, namespace and text (with any traceback) of a line ``json_line`` wrote;
    None for any other line. For a parent re-emitting its workers' events at their level.
    """
    try:
        record = json.loads(line)
        level = LogLevel.levelWithName(record["level"])
        text = record["event"] + ("\n" + record["traceback"] if "traceback" in record else "")
        return level, record["namespace"], text
    except (ValueError, TypeError, KeyError, InvalidLogLevelError):
        return None


def json_file_observer(out: IO[str]) -> ILogObserver:
    """An observer writing one JSON object per line to ``out``."""
    return FileLogObserver(out, json_line)


class ThrottledLog:
    """
    The log of the error paths a client or a plugin can drive: each kind of line at most
    once an interval (``ratelimit.LogThrottle``), telling how many like it were dropped,
    so a client that provokes an error in a loop costs one line a minute, not 44 KB/s.
    """

    def __init__(self, log: Logger, clock: IReactorTime, interval: float = 60.0) -> None:
        self._log = log
        self._throttle = LogThrottle(clock, interval)

    def emit(
        self, kind: str, text: str, failure: Failure | None = None, level: LogLevel = LogLevel.warn, **fields: Any
    ) -> None:
        """Log ``text``, a format over ``fields``, and ``failure``'s traceback, unless ``kind`` was just logged."""
        dropped = self._throttle.allow(kind)
        if dropped is None:
            return
        if dropped:
            text += " ({dropped} more like it not logged)"
        if failure is None:
            self._log.emit(level, text, dropped=dropped, **fields)
        else:
            self._log.failure(text, failure, level, dropped=dropped, **fields)


def twistd_log_file(twistd_options: Any) -> IO[str]:
    """The file twistd's own logger would write to, by the same rules (see _twistd_unix)."""
    name = twistd_options.get("logfile")
    if name == "-" or (not name and twistd_options.get("nodaemon")):
        return sys.stdout
    log_file = LogFile.fromFullPath(name or "twistd.log")
    if log_file.defaultMode is None:
        # Made now, before twistd daemonizes, with the operator's umask. A daemon runs
        # with twistd's 077, which would make every file after a rotation 0600.
        log_file.defaultMode = stat.S_IMODE(os.stat(log_file.path).st_mode)
    return log_file


def twistd_observer(twistd_options: Any, log_format: str, log_level: str) -> tuple[ILogObserver, IO[str]] | None:
    """The observer to hand twistd and the file it writes, or None where twistd's own does what was asked."""
    if twistd_options is None or twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    if twistd_options.get("logfile") == "-" and not twistd_options.get("nodaemon"):
        return None  # twistd refuses this itself, with its own message
    out = twistd_log_file(twistd_options)
    if out is sys.stdout and log_format == "text" and level_named(log_level) == LogLevel.info:
        return None
    observer = json_file_observer(out) if log_format == "json" else textFileLogObserver(out)
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=level_named(log_level))]), out


class LoggedService(MultiService):
    """
    The top service of a node. When twistd adds it to its Application, it also sets
    the Application's ``ILogObserver``, which twistd starts right after; while it runs,
    ``SIGUSR1`` rotates that observer's log file, as it would twistd's.
    """

    def __init__(self, reactor: IReactorThreads, log: tuple[ILogObserver, IO[str]] | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self.observer: ILogObserver | None = None
        self._log_file: IO[str] | None = None
        if log is not None:
            self.observer, self._log_file = log
        self._previous_handler: Any = None

    def setServiceParent(self, parent: Any) -> None:
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        # as twistd does: only where nothing else handles SIGUSR1 already
        if isinstance(self._log_file, LogFile) and not signal.getsignal(signal.SIGUSR1):
            self._previous_handler = signal.signal(signal.SIGUSR1, partial(self._rotate, self._log_file))
        super().startService()

    def stopService(self) -> Any:
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._previous_handler = None
        return super().stopService()

    def _rotate(self, log_file: LogFile, signum: int, frame: Any) -> None:
        # the handler runs between two bytecodes, maybe in the middle of a write
        self._reactor.callFromThread(log_file.rotate)
