"""
Open file descriptors: as many as the system lets the process have, and connections
refused at that limit counted and logged once a minute.

Every socket is a descriptor. systemd starts a service with a soft ``RLIMIT_NOFILE`` of
1024 and a hard one of 524288: under the soft one a node serves about a thousand
browsers. So the soft limit is raised to the hard one at start-up, as systemd advises
for programs that need many (Go's runtime does it for every program); the reactor is
epoll, which has no ``FD_SETSIZE``.

At the limit, Twisted's accept loop closes each new connection on a descriptor it keeps
in reserve and logs three lines for it: a client connecting in a loop wrote 20,317 lines
in 5 s. ``AcceptErrors`` takes the accept loop's lines from the listening ports
(``AcceptErrorsLogged``): each refusal is counted in
``tangram_channel_http_refusals_total{reason="descriptors"}`` and one line a minute says so.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from zope.interface import implementer

from .logs import ThrottledLog
from .metrics import Metrics

log = Logger()

Limits = tuple[int, int]


def raise_open_files_limit(
    get: Callable[[], Limits] = lambda: resource.getrlimit(resource.RLIMIT_NOFILE),
    set_: Callable[[Limits], None] = lambda limits: resource.setrlimit(resource.RLIMIT_NOFILE, limits),
) -> int:
    """Raise the soft limit on open descriptors to the hard one; the soft limit in effect after."""
    soft, hard = get()
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft  # macOS may say infinity and refuse past OPEN_MAX: leave it to the operator
    try:
        set_((hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


# the lines of Twisted's accept loop (``tcp._accept``): one per connection closed at the
# limit, two around each batch of them, one for an error that leaves the connection queued
_REFUSED = "EMFILE recovery: Closed socket"
_RESERVE = ("EMFILE encountered", "Re-reserving EMFILE")
_NOT_ACCEPTED = "Could not accept new connection"


@implementer(ILogObserver)
class AcceptErrors:
    """The log of the listening ports: their accept loop's errors counted and throttled, the rest passed on."""

    def __init__(self, metrics: Metrics, clock: IReactorTime, forward: ILogObserver = globalLogPublisher) -> None:
        self._refusals = metrics.http_refusals.labels("descriptors")
        self._errors = ThrottledLog(log, clock)
        self._forward = forward

    def __call__(self, event: dict[str, Any]) -> None:
        text = event.get("log_format") or ""
        if text.startswith(_REFUSED):
            self._refusals.inc()
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self._errors.emit(
                "descriptors",
                "refused connections: the process has its {limit} descriptors open (RLIMIT_NOFILE)",
                limit=limit,
            )
        elif text.startswith(_RESERVE):
            return
        elif text.startswith(_NOT_ACCEPTED):
            self._errors.emit(
                "accept", "could not accept a connection ({error}); it waits in the queue",
                level=LogLevel.error, error=event.get("acceptError"),
            )
        else:
            self._forward(event)


@implementer(IStreamServerEndpoint)
class AcceptErrorsLogged:
    """``endpoint``, whose listening port logs to ``observer``."""

    def __init__(self, endpoint: IStreamServerEndpoint, observer: ILogObserver) -> None:
        self._endpoint = endpoint
        self._observer = observer

    def listen(self, protocolFactory: Any) -> defer.Deferred[IListeningPort]:
        return self._endpoint.listen(protocolFactory).addCallback(self._logging_to_observer)

    def _logging_to_observer(self, port: Any) -> Any:
        # a tcp.Port (ssl and unix ports are its subclasses) logs its accept loop through
        # the class's Logger; one of its own, on the same namespace, goes to the observer
        logger = getattr(port, "_logger", None)
        if isinstance(logger, Logger):
            port._logger = Logger(namespace=logger.namespace, observer=self._observer)
        return port
