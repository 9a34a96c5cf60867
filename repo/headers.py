"""What a header from an untrusted server may hold, parsed strictly: numbers and validators.

A hostile server controls every header byte. ``str.isdigit`` accepts ``"²"`` and ``"٣"`` (which ``int`` then
refuses, or reads as 3), ``int`` accepts ``" +12"`` and thousands of digits; so numbers here are ASCII digits
only, at most 19 of them (below 2**63), and anything else is a :class:`NetworkError` naming the URL and the
header. A validator (ETag, Last-Modified) is kept for a resume only if an honest server will accept it back in
``If-Range``: a strong ETag or an HTTP date, visible ASCII, at most MAX_VALIDATOR characters.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping

from lorien.repo.errors import NetworkError

_NUMBER = re.compile(r"[0-9]{1,19}")  # ASCII digits only (str.isdigit also takes "²" and "٣"); below 2**63
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)")
_CONTENT_RANGE_TOTAL = re.compile(r"bytes (?:[0-9]{1,19}-[0-9]{1,19}|\*)/([0-9]{1,19})")
_STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e]*"')  # RFC 9110 entity-tag without obs-text; W/ (weak) is no match
MAX_VALIDATOR = 200  # characters: a validator is sent back on every resume, so only a short, clean one is kept


def usable_validator(value: str | None) -> bool:
    """Whether ``value`` may be kept and sent back as If-Range: a strong ETag or an HTTP date, visible ASCII
    and at most MAX_VALIDATOR characters. Anything else (control characters, 10 KB, a weak ETag) would be
    refused by an honest server on every resume."""
    if not isinstance(value, str) or not value or len(value) > MAX_VALIDATOR:  # a record's value may be anything
        return False
    if _STRONG_ETAG.fullmatch(value):
        return True
    return value.isascii() and value.isprintable() and email.utils.parsedate(value) is not None


def header_number(url: str, headers: Mapping[str, str], name: str) -> int | None:
    """The header's value as a number, None when it is absent; NetworkError when it is not plain digits."""
    value = headers.get(name)
    if value is None:
        return None
    if not _NUMBER.fullmatch(value.strip()):
        raise NetworkError(f"{url}: malformed {name} header {value[:40]!r}: expected ASCII digits")
    return int(value)


def content_range_start(url: str, value: str | None) -> int:
    """The first byte of a 206's ``Content-Range: bytes first-last/total``; NetworkError when it is malformed."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    first, last, total = match.groups() if match else ("", "", "")
    if not match or int(first) > int(last) or (total != "*" and int(last) >= int(total)):
        raise NetworkError(f"{url}: malformed Content-Range header {(value or '')[:60]!r} in a 206 answer")
    return int(first)


def content_range_total(value: str | None) -> int | None:
    """The ``total`` of ``Content-Range: bytes first-last/total`` (a 206) or ``bytes */total`` (a 416): the size
    of the whole file as the server states it; None when it is ``*``, absent or malformed."""
    match = _CONTENT_RANGE_TOTAL.fullmatch((value or "").strip())
    return int(match.group(1)) if match else None
