"""Scan ``MODELS/<family>/<version>.<ext>`` into validated families, collecting every problem.

Output: a :class:`ScanResult` whose ``families`` maps a family name to its model files (oldest first) and whose
``problems`` maps a family name (or ``None`` for the models directory itself) to one-line messages. A family
with any problem is not in ``families``: the publisher writes nothing for it.

Ignored on purpose: hidden files and names that look like partial downloads (``.part``, ``.tmp``, ``.partial``,
``.crdownload``), so a copy in progress is never taken as a version; and backup or editor leftovers (``.bak``,
``.orig``, ``.old``, ``.rej``, ``.swp``, a ``~`` suffix, ``#name#``), so ``1.0.0.onnx.bak`` never becomes
version ``1.0.0.onnx``. The latter are listed in ``ScanResult.ignored``: the publisher warns about each once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorien.publisher.channels import CHANNELS_FILE
from lorien.repo.errors import BadInputError
from lorien.repo.fingerprint import MIN_FILE_SIZE
from lorien.repo.layout import family_name_problem
from lorien.repo.versions import same_version, sort_versions, version_name_problem

PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")
BACKUP_SUFFIXES = (".bak", ".orig", ".old", ".rej", ".swp", "~")


@dataclass(frozen=True)
class ModelFile:
    family: str
    version: str
    extension: str
    path: Path


@dataclass
class ScanResult:
    families: dict[str, list[ModelFile]] = field(default_factory=dict)
    problems: dict[str | None, list[str]] = field(default_factory=dict)
    lenient: bool = False  # watch mode: a bad file is skipped (and listed in ``skipped``), its family still goes
    skipped: list[str] = field(default_factory=list)
    exclude: frozenset[Path] = frozenset()  # files not to look at yet (still being written)
    ignored: list[Path] = field(default_factory=list)  # backup and editor files left out (warned about)

    def add_problem(self, family: str | None, message: str) -> None:
        self.problems.setdefault(family, []).append(message)

    def file_problem(self, family: str, message: str) -> None:
        if self.lenient:
            self.skipped.append(message)
        else:
            self.add_problem(family, message)

    def all_problems(self) -> list[str]:
        return [message for messages in self.problems.values() for message in messages]


def is_backup_name(name: str) -> bool:
    """``1.0.0.onnx.bak``, ``1.0.0.onnx~``, ``#1.0.0.onnx#`` and the like: a copy someone (or an editor) kept."""
    return name.endswith(BACKUP_SUFFIXES) or (len(name) > 1 and name.startswith("#") and name.endswith("#"))


def is_ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIXES) or is_backup_name(name)


def _skip(entry: Path, result: ScanResult) -> bool:
    """True for a name that is never a version; a backup name is also noted so the publisher can warn."""
    if not is_ignored(entry.name):
        return False
    if is_backup_name(entry.name) and not entry.name.startswith("."):
        result.ignored.append(entry)
    return True


def split_model_name(name: str) -> tuple[str, str]:
    """``1.2.0.tflite`` → (``1.2.0``, ``tflite``); a trailing all-digit part is part of the version."""
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or not any(ch.isalpha() for ch in extension):
        return name, ""
    return stem, extension


def _readable_problem(path: Path) -> str | None:
    try:
        if not path.is_file():
            return "is not a regular file"
        size = path.stat().st_size
        if size == 0:
            return "is empty (0 bytes); a model file must have content"
        if size < MIN_FILE_SIZE:
            return f"is only {size} bytes; a model needs at least {MIN_FILE_SIZE} bytes to be fingerprinted"
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    return None


def scan_family(directory: Path, result: ScanResult) -> None:
    family = directory.name
    if problem := family_name_problem(family):
        result.add_problem(family, f"{directory}: family name {problem}")
        return
    files: list[ModelFile] = []
    for entry in sorted(directory.iterdir()):
        if entry in result.exclude or _skip(entry, result) or entry.name == CHANNELS_FILE:
            continue  # channels.toml: the family's channels (publisher.channels), not a version
        if entry.is_dir():
            result.file_problem(
                family, f"{entry}: unexpected directory; a family holds <version>.<ext> files only"
            )
            continue
        version, extension = split_model_name(entry.name)
        if problem := version_name_problem(version):
            result.file_problem(family, f"{entry}: '{version}' is not a version name: it {problem}")
            continue
        if problem := _readable_problem(entry):
            result.file_problem(family, f"{entry}: {problem}")
            continue
        for other in files:
            if same_version(other.version, version):
                result.file_problem(
                    family, f"{entry}: version {version} is also given by {other.path.name}; keep only one"
                )
                break
        else:
            files.append(ModelFile(family, version, extension, entry))
    if not files and family not in result.problems:
        if result.lenient:
            return  # watch mode: an empty (or not yet complete) family is simply not there yet
        result.add_problem(family, f"{directory}: no model files; expected {directory}/<version>.<ext>")
    if family in result.problems:
        return
    order = sort_versions(f.version for f in files)
    by_version = {f.version: f for f in files}
    result.families[family] = [by_version[name] for name in order]


def scan_models(models_dir: Path, exclude: frozenset[Path] = frozenset(), lenient: bool = False) -> ScanResult:
    """Raise BadInputError when the directory itself is unusable; otherwise collect problems per family.

    ``lenient`` (watch mode) skips a bad file instead of holding back its whole family; ``exclude`` names files
    to leave out for now (a watcher's files that are still being written)."""
    if not models_dir.exists():
        raise BadInputError(f"{models_dir}: models directory does not exist")
    if not models_dir.is_dir():
        raise BadInputError(f"{models_dir}: is not a directory; --models takes a directory of family folders")
    result = ScanResult(lenient=lenient, exclude=exclude)
    try:
        entries = sorted(models_dir.iterdir())
    except OSError as error:
        raise BadInputError(f"{models_dir}: cannot list models directory: {error.strerror}") from None
    for entry in entries:
        if _skip(entry, result):
            continue
        if entry.is_dir():
            scan_family(entry, result)
        elif lenient:
            result.skipped.append(f"{entry}: stray file; models go in {models_dir}/<family>/<version>.<ext>")
        else:
            result.add_problem(None, f"{entry}: stray file; models go in {models_dir}/<family>/<version>.<ext>")
    if not result.families and not result.problems and not lenient:
        result.add_problem(
            None, f"{models_dir}: no model families found; expected {models_dir}/<family>/<version>.<ext>"
        )
    return result
