"""What one publish (or one watcher) is asked to do: :class:`PublishOptions`, checked once before any write.

``lorien publish`` and ``lorien watch`` build it from their flags (``lorien/cli/publishing.py``);
:func:`~publisher.publish.publish` reads the patch, leniency and progress fields, and the repository writer
(:mod:`publisher.writer`, :mod:`publisher.signed`) the signing, expiry and sequence fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from lorien.publisher.tuf_writer import Expiry
from lorien.repo.engine.container import checked_max_version
from lorien.repo.errors import BadInputError
from lorien.repo.manifest import MAX_SEQUENCE
from lorien.repo.signing import SigningKey

DEFAULT_KEEP = 3
DEFAULT_EXPIRES_DAYS = 7.0

PublishProgress = Callable[[str, int, int], None]  # (what is being done, done bytes, total bytes)


@dataclass
class PublishOptions:
    keep: int = DEFAULT_KEEP
    max_patch_ratio: float | None = None  # a patch larger than this share of the full model is not published
    lenient: bool = False  # watch mode: skip bad files instead of holding back their family
    rejected: set[tuple[str, str]] = field(default_factory=set)  # (source, target) sha256 pairs already too big
    sign_keys: tuple[SigningKey, ...] = ()  # sign every TUF role (targets, snapshot, timestamp) they may sign
    expiry: Expiry = field(default_factory=Expiry)  # days each TUF role's metadata stays valid
    legacy_signatures: bool = False  # migration only: also write the old detached .sig files
    expires_days: float = DEFAULT_EXPIRES_DAYS  # manifests expire this long after being written; 0 = never
    allow_downgrade: bool | None = None  # None: keep what each family's manifest says (default False)
    min_sequence: int = 0  # a rebuilt repository starts its sequences above what devices already accepted
    warned: set[Path] = field(default_factory=set)  # backup/editor files already warned about (once per file)
    progress: PublishProgress | None = None  # told about long work: hashing a family, making each patch
    compress: bool = True  # also store the newest version compressed on its own (when that saves enough)
    incompressible: set[str] = field(default_factory=set)  # sha256 of models whose compression saved too little
    # newest lorien patch container version a patch or compressed model may need (devices of an older release
    # read fewer; docs/patch-format.md); None: this release's newest
    max_patch_format: int | None = None

    @property
    def validity(self) -> timedelta | None:
        return timedelta(days=self.expires_days) if self.expires_days > 0 else None

    def check(self) -> None:
        if self.keep < 0:
            raise BadInputError(f"--keep must be 0 or more, got {self.keep}")
        if self.max_patch_ratio is not None and not 0 < self.max_patch_ratio <= 10:
            raise BadInputError(f"--max-patch-ratio must be in (0, 10], got {self.max_patch_ratio}")
        if self.max_patch_format is not None:
            checked_max_version(self.max_patch_format, "--max-patch-format")
        if not 0 <= self.expires_days <= 3660:
            raise BadInputError(f"--expires-days must be from 0 (never) to 3660, got {self.expires_days}")
        if not 0 <= self.min_sequence <= MAX_SEQUENCE // 2:
            raise BadInputError(
                f"--min-sequence must be from 0 to {MAX_SEQUENCE // 2} (half the largest sequence, so renewals "
                f"keep working for ever), got {self.min_sequence}"
            )
