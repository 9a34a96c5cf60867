"""lorien's shared core: repository format, fingerprints, delta engine, atomic writes, HTTP client.

Data flows one way: the publisher writes a repository with these pieces, the device reads it with the same
pieces. Nothing in here imports ``publisher`` or ``device``.

Public API (Mallorn-compatible names where Mallorn has them)::

    from lorien.repo import fingerprint, create_patch, apply_patch, verify_patch, patch_info
"""

from lorien.repo.engine import apply_patch, create_patch, patch_info, verify_patch
from lorien.repo.errors import LorienError
from lorien.repo.fingerprint import Fingerprint, fingerprint

__all__ = [
    "Fingerprint",
    "LorienError",
    "apply_patch",
    "create_patch",
    "fingerprint",
    "patch_info",
    "verify_patch",
]
