"""Version names and their order.

A model file ``<version>.<ext>`` is named by its stem. Versions of one family are ordered by PEP 440
(``packaging``) when every name in the family parses as one; otherwise all of them are ordered "naturally"
(digit runs compared as numbers: ``build9 < build10``). Mixing the two orders inside one family would give
surprising results, so it is all or nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from packaging.version import InvalidVersion, Version

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_DIGIT_RUNS = re.compile(r"(\d+)")


def version_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a version name, or None when it can."""
    if not NAME_PATTERN.fullmatch(name):
        return "may only contain letters, digits and . _ + - and must start with a letter or digit"
    if not any(ch.isdigit() for ch in name):
        return "contains no digit, so it cannot be ordered as a version (e.g. 1.0, 2024.11.3, build7)"
    return None


def is_pep440(name: str) -> bool:
    try:
        Version(name)
    except InvalidVersion:
        return False
    return True


def natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part.lower() for part in _DIGIT_RUNS.split(name))


def sort_versions(names: Iterable[str]) -> list[str]:
    """Oldest first."""
    names = list(names)
    if all(is_pep440(name) for name in names):
        return sorted(names, key=lambda name: (Version(name), name))
    return sorted(names, key=lambda name: (natural_key(name), name))


def same_version(a: str, b: str) -> bool:
    """True when two different spellings name one version (``1.0`` and ``1.0.0`` under PEP 440)."""
    if a == b:
        return True
    if is_pep440(a) and is_pep440(b):
        return Version(a) == Version(b)
    return False


def is_newer(a: str, b: str) -> bool:
    """True when version ``a`` sorts after version ``b`` (and they are not two spellings of one version)."""
    return not same_version(a, b) and sort_versions([a, b])[-1] == a
