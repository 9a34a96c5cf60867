"""One exceptions module for the whole project.

Every error a user can cause carries a message that says what is wrong, where, and how to fix it. The CLI
prints ``str(error)`` on one line and exits with ``error.exit_code``.
"""


class LorienError(Exception):
    """Base class: a problem the user can act on. Exit code 2 (bad input) unless a subclass says otherwise."""

    exit_code = 2


class BadInputError(LorienError):
    """A file, directory, argument or document given to us is not acceptable."""


class FingerprintError(BadInputError):
    """A file cannot be fingerprinted (missing, unreadable, or shorter than 4 bytes)."""


class ManifestError(BadInputError):
    """A repository document (index.json, manifest.json) is missing, malformed or inconsistent."""


class PatchError(LorienError):
    """A patch is corrupt, truncated, made for another source file, or needs an engine we do not have."""


class IntegrityError(LorienError):
    """Bytes do not match the size or digest that a manifest or patch promised."""

    exit_code = 1


class RepositoryLockedError(LorienError):
    """Another process holds the repository's writer lock."""

    exit_code = 3


class FetchError(LorienError):
    """A repository file could not be fetched (HTTP error, connection failure, too large)."""

    exit_code = 1


class SignatureError(LorienError):
    """Repository metadata is unsigned, signed by a key we do not trust, or its signature does not match."""

    exit_code = 1


class FreshnessError(LorienError):
    """Repository metadata is expired, older than what was already accepted, or would install an older model."""

    exit_code = 1
