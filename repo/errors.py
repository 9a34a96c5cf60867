"""Every exception lorien raises on purpose, in one module, split by cause.

Each cause has one exit code, which the ``lorien`` command uses when the error ends it (README has the table):

==========================  ====  ==========================================================================
cause (root class)          exit  examples
==========================  ====  ==========================================================================
verification found problems  1    ``inspect --verify`` findings, bytes that do not match their digest,
(:class:`VerificationError`)      unsigned / untrusted / expired / replayed metadata, a failed update
bad input                    2    an argument, file or document given to us that is not acceptable, a
(:class:`BadInputError`)          corrupt patch, a config file with a wrong key
busy                         3    another process holds the repository's writer lock; an operation runs
(:class:`BusyError`)
network                      4    the server is unreachable, answers an HTTP error, is too slow, or sends
(:class:`NetworkError`)           more than it announced
local I/O                    5    disk full, permission denied, a path that vanished — an ``OSError``
(:class:`LocalIOError`)           wrapped with the path and what we were doing
==========================  ====  ==========================================================================

Every error carries a message that says what is wrong, where, and how to fix it; the CLI prints ``str(error)``
on one line. The device API maps the same causes onto HTTP status codes (``device.api``).
"""

from __future__ import annotations

import errno


class LorienError(Exception):
    """Base class: a problem the user can act on. Exit code 2 (bad input) unless a subclass says otherwise."""

    exit_code = 2


# ---------------------------------------------------------------------------------------------- bad input (2)


class BadInputError(LorienError):
    """A file, directory, argument or document given to us is not acceptable."""


class FingerprintError(BadInputError):
    """A file cannot be fingerprinted (missing, unreadable, or shorter than 4 bytes)."""


class ManifestError(BadInputError):
    """A repository document (index.json, manifest.json) is missing, malformed or inconsistent."""


class PackageError(BadInputError):
    """A zip package (TOPE ``update.zip``) is malformed or hostile: zip-slip, links, duplicate names, zip bomb."""


class PatchError(LorienError):
    """A patch is corrupt, truncated, made for another source file, or needs an engine we do not have."""


# -------------------------------------------------------------------------------- verification problems (1)


class VerificationError(LorienError):
    """Root of the trust and integrity causes: something we were given does not verify."""

    exit_code = 1


class IntegrityError(VerificationError):
    """Bytes do not match the size or digest that a manifest or patch promised."""


class SignatureError(VerificationError):
    """Repository metadata is unsigned, signed by a key we do not trust, or its signature does not match."""


class FreshnessError(VerificationError):
    """Repository metadata is expired, older than what was already accepted, or would install an older model."""


class UpdateFailed(VerificationError):
    """A device update could not be completed (no package to install, no backup, not enough space, …)."""


class ServiceError(UpdateFailed):
    """The service that consumes the model could not be stopped or started."""


# ------------------------------------------------------------------------------------------------- busy (3)


class BusyError(LorienError):
    """Someone else is doing the work: another process holds a lock, or another operation is running."""

    exit_code = 3


class RepositoryLockedError(BusyError):
    """Another process holds the repository's writer lock."""


class Busy(BusyError):
    """Another device operation is running (the API answers 409)."""


# ---------------------------------------------------------------------------------------------- network (4)


class NetworkError(LorienError):
    """A repository file could not be fetched: unreachable server, HTTP error, too slow, or too large."""

    exit_code = 4


class TransientNetworkError(NetworkError):
    """A failure that may pass by itself: a connection refused, reset or broken, a timeout, a stall, a body
    below the minimum rate, an HTTP 500/502/503/504. ``repo.transport.RetryPolicy`` retries these; ``reason`` is
    the message without the URL, for the error that reports the last attempt."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


class ResumeRefused(NetworkError):
    """A 4xx answer to a request that resumes a download (``Range`` + ``If-Range``): the server will not
    continue the partial file (say, its validator is one it refuses), so the downloader starts from zero."""


class NotFoundError(NetworkError):
    """The server has no such file (HTTP 403, 404 or 410; a missing file in a repository directory). TUF's root
    walk ends here: no newer root version exists."""


class OversizeError(NetworkError):
    """A server announced or sent more bytes than the request allows (a document limit, a blob's declared size).
    Nothing past the bound is read; the downloader counts it like a digest mismatch."""


class SizeMismatchError(NetworkError):
    """A server states that a blob is shorter than the size declared for it (a whole answer's Content-Length,
    the total in a Content-Range): waiting will not change it, so the downloader counts it like a digest
    mismatch instead of retrying."""


# -------------------------------------------------------------------------------------------- local I/O (5)


class LocalIOError(LorienError):
    """The local file system refused: disk full, permission denied, a path that is missing or vanished."""

    exit_code = 5

    @classmethod
    def wrap(cls, error: OSError, doing: str) -> LocalIOError:
        """``doing`` says what we were doing (``"writing the manifest"``); the message adds path and advice."""
        where = f": {error.filename}" if error.filename else ""
        advice = {
            errno.ENOSPC: "free some space or point lorien at a larger file system",
            errno.EDQUOT: "free some space or raise the quota",
            errno.EACCES: "check the owner and mode of the path, or run as a user who may write there",
            errno.EPERM: "check the owner and mode of the path, or run as a user who may write there",
            errno.ENOENT: "check the path",
            errno.EROFS: "the file system is read-only; use a writable location",
        }.get(error.errno or 0, "check the path and the file system")
        return cls(f"{doing}{where}: {error.strerror or error}; {advice}")
