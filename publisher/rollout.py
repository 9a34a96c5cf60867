"""``lorien rollout``: change one channel of a published family in place — halt, resume, a new share or target, a
roll-back — through the publisher's normal manifest write path, so the result is sequenced, dated and signed
exactly like a publish.

Flow, under the repository's writer lock: read the family's manifest (``SignedMetadataWriter.read_manifest``:
with keys, one not signed by them is refused) → apply a pure edit from :mod:`publisher.channels` to the channel
→ check the versions it names are published → the patches towards a new target (from the repository's own
blobs: the previous ``keep`` versions and the versions rolled back to it; ``with_channel_patches``, as a publish
makes them), ``latest`` following ``stable`` → ``write_manifest`` (next sequence, signature) → the family page →
``renew_and_index`` (index.json last, as in a publish). A later ``lorien publish`` keeps the edited state
(``merge_channels``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from lorien.publisher.options import PublishOptions
from lorien.publisher.publish import FamilyResult, with_channel_patches
from lorien.publisher.writer import RepositoryWriter
from lorien.repo.channels import Channel
from lorien.repo.errors import BadInputError, LocalIOError, RepositoryLockedError
from lorien.repo.lock import repository_lock
from lorien.repo.manifest import Manifest, parse_timestamp


def change_channel(
    repo_dir: Path,
    family: str,
    channel: str,
    edit: Callable[[Channel], Channel],
    options: PublishOptions,
    keep_validity: bool = False,
    locked: bool = False,
) -> Manifest:
    """Apply ``edit`` to ``channel`` of ``family`` and publish the result; returns the manifest written.
    ``keep_validity``: the rewritten manifest is valid as long as the one it replaces was (from its
    ``generated_at`` to its ``expires``; never, if it had no expiry) instead of ``options.expires_days``.
    ``locked``: the caller holds the writer lock already (``lorien watch``, ``publisher.rollout_requests``).

    Raises:
        BadInputError: no such family or channel, or the edit names a version that is not published.
        BusyError: another writer holds the repository.
        SignatureError: the manifest on disk is not signed by the given keys.
    """
    options.check()
    if not repo_dir.is_dir():
        raise BadInputError(f"{repo_dir}: repository directory does not exist")
    try:
        with contextlib.nullcontext() if locked else repository_lock(repo_dir):
            writer = RepositoryWriter(repo_dir, options=options)
            writer.check_signing_mode()
            previous = writer.read_manifest(family)
            if previous is None:
                raise BadInputError(f"{repo_dir}: family {family!r} is not published (no {family}/manifest.json)")
            if keep_validity:
                options.expires_days = _validity_days(previous)
            current = previous.channel(channel)
            if current is None:
                known = ", ".join(sorted(previous.channels or {})) or "none"
                raise BadInputError(
                    f"{family}: channel {channel!r} is not published (channels: {known}); declare it in "
                    f"<models>/{family}/channels.toml and publish"
                )
            changed = edit(current)
            listed = {entry.version for entry in previous.versions}
            for version in changed.versions():
                if version not in listed:
                    raise BadInputError(f"{family}: version {version!r} is not published; publish it first")
            channels = {**(previous.channels or {}), channel: changed}
            edited = replace(previous, channels=channels)
            edited = with_channel_patches(writer, edited, options.keep, options, FamilyResult(family))
            manifest, _ = writer.write_manifest(edited, previous)
            writer.write_family_page(manifest)
            writer.renew_and_index()
    except RepositoryLockedError as error:
        raise RepositoryLockedError(
            f"{error}. A `lorien watch` holds its repository for its whole life: add --models with its models "
            "directory to hand it the change"
        ) from None
    except OSError as error:
        raise LocalIOError.wrap(error, f"changing {family}/{channel} in {repo_dir}") from None
    return manifest


def _validity_days(manifest: Manifest) -> float:
    """How long ``manifest`` was valid for when written, in days (0: it never expires)."""
    expires = manifest.expires_at()
    if expires is None:
        return 0.0
    return max((expires - parse_timestamp(manifest.generated_at)).total_seconds() / 86400, 1 / 1440)
