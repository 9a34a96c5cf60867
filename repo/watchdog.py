"""Deadlines that interrupt a blocked read: requests has no total timeout, so lorien closes the socket itself.

``requests`` bounds each socket read (the stall timeout) but not a whole response: a server that sends its
status line and headers one byte every 20 s is never silent long enough to time out. :class:`Watchdog` is
armed with a :class:`Deadline` before the request is sent; the connection registers its socket when it starts
reading the answer (``getresponse``, through the pool classes :func:`watched_session` installs). When the
deadline passes first, a timer thread shuts the socket down: the blocked read returns (an EOF or a broken
connection), and the transport, seeing :attr:`Watchdog.fired`, reports the deadline's error instead of the
connection's. Re-arming moves the watch from the head to the body; disarming (the answer was closed) releases
the socket so a pooled connection reused later is never touched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from lorien.repo.errors import NetworkError, TransientNetworkError


@dataclass(frozen=True)
class Deadline:
    """By ``at`` (on the transport's clock) something must have arrived: ``what``, within ``limits.<limit>``
    seconds. A head deadline is transient (the next attempt may be faster); a document's is not (its time is
    spent, whatever the attempt)."""

    at: float
    what: str  # "a complete response head", "the whole document"
    limit: str  # the Limits field
    seconds: float
    transient: bool

    def error(self, url: str) -> NetworkError:
        reason = (
            f"{self.what} did not arrive within {self.seconds:g} s (limits.{self.limit}={self.seconds:g}); "
            "the server is too slow"
        )
        return TransientNetworkError(url, reason) if self.transient else NetworkError(f"{url}: {reason}")


_current = threading.local()  # the watchdog of the request this thread is sending, for the connection to find


class Watchdog:
    """One request's guard: shuts its socket down when the armed deadline passes (wall-clock seconds)."""

    def __init__(self) -> None:
        self.fired: Deadline | None = None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer: threading.Timer | None = None
        self._armed = 0  # which arm() the running timer belongs to: a replaced one's late firing is ignored

    def arm(self, deadline: Deadline, seconds_left: float) -> None:
        """Watch ``deadline``, which passes ``seconds_left`` from now (replacing what was watched before)."""
        self.disarm(release=False)
        with self._lock:
            self._armed += 1
            self._timer = threading.Timer(max(seconds_left, 0.0), self._fire, (deadline, self._armed))
            self._timer.daemon = True
            self._timer.start()

    def disarm(self, release: bool = True) -> None:
        """Stop watching; ``release`` also forgets the socket (the answer is closed)."""
        with self._lock:
            timer, self._timer = self._timer, None
            if release:
                self._sock = None
        if timer is not None:
            timer.cancel()

    def watch(self, sock: socket.socket | None) -> None:
        """The socket the answer arrives on; shut down at once when the deadline already passed."""
        with self._lock:
            self._sock = sock
            if self.fired is not None:
                _shut(sock)

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """``with watchdog.sending():`` — a connection reading an answer in the block registers its socket here."""
        _current.watchdog = self
        try:
            yield
        finally:
            _current.watchdog = None

    def _fire(self, deadline: Deadline, armed: int) -> None:
        with self._lock:
            if self._timer is None or armed != self._armed:
                return  # disarmed or re-armed while this timer was going off
            self.fired = deadline
            _shut(self._sock)


def _shut(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: an SSL socket's would touch its state


def _register(sock: socket.socket | None) -> None:
    watchdog = getattr(_current, "watchdog", None)
    if watchdog is not None:
        watchdog.watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self):  # type: ignore[override]
        _register(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self):  # type: ignore[override]
        _register(self.sock)
        return super().getresponse()


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def watched_session() -> requests.Session:
    """A requests session whose connections register their socket with the watchdog of the current request."""
    session = requests.Session()
    for adapter in session.adapters.values():
        adapter.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
    return session
