"""A TUF root.json for tests that need one without publishing a repository (device configs, install docs)."""

from __future__ import annotations

from pathlib import Path

from lorien.publisher.tuf_writer import TufWriter, serialize
from lorien.repo.signing import SigningKey
from lorien.repo.tufmeta import ROLES, signer


def signed_root(key: SigningKey) -> bytes:
    """Version 1 of a root naming ``key`` for every role, signed by it."""
    root = TufWriter(Path("unused")).initial_root({role: [key] for role in ROLES}, {})
    root.sign(signer(key))
    return serialize(root)
