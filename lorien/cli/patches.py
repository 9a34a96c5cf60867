"""The delta engine on its own, one file at a time: ``diff`` makes a patch, ``apply`` applies one, ``verify-patch``
applies without writing, ``patch-info`` describes one. No repository is involved.

Each command's arguments are added next to its handler, whose docstring is the command's help; the work is done
by :mod:`repo.engine`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorien.cli._options import (
    Commands,
    add_command,
    add_engine_option,
    add_json_option,
    add_max_patch_format_option,
    add_quiet_option,
    max_patch_format,
    print_fields,
)
from lorien.cli._progress import Progress


def _diff(args: argparse.Namespace) -> int:
    """create a patch that turns OLD into NEW"""
    from lorien.repo.engine import create_patch

    with Progress("diff", quiet=args.quiet) as progress:
        stats = create_patch(
            args.old,
            args.new,
            args.output,
            engine=args.engine,
            progress=progress.bytes(f"{args.new.name} encoded"),
            max_format=max_patch_format(args),
        )
    version = "" if stats.format_version is None else f" format {stats.format_version},"
    print(
        f"{args.output}: {stats.patch_size} bytes, {100 * stats.ratio:.2f}% of the {stats.target_size}-byte new "
        f"model (engine {stats.engine},{version} {stats.seconds:.2f}s)"
    )
    return 0


def _add_diff(commands: Commands) -> None:
    command = add_command(commands, "diff", _diff, doing="making the patch")
    command.add_argument("old", type=Path, help="model file the device has")
    command.add_argument("new", type=Path, help="model file the device should get")
    command.add_argument("-o", "--output", type=Path, required=True, help="patch file to write")
    add_engine_option(command)
    add_max_patch_format_option(command)
    add_quiet_option(command)


def _apply(args: argparse.Namespace) -> int:
    """apply PATCH to OLD and write the verified result (atomically) to -o"""
    from lorien.repo.engine import apply_patch

    with Progress("apply", quiet=args.quiet) as progress:
        result = apply_patch(
            args.old, args.patch, args.output, progress=progress.bytes(f"{args.output.name} written")
        )
    print(
        f"{args.output}: {result.target_size} bytes, sha256 {result.target_sha256} verified (engine {result.engine})"
    )
    return 0


def _add_apply(commands: Commands) -> None:
    command = add_command(commands, "apply", _apply, doing="applying the patch")
    command.add_argument("old", type=Path, help="model file the patch was made from")
    command.add_argument("patch", type=Path, help="patch file (lorien diff)")
    command.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    add_quiet_option(command)


def _verify_patch(args: argparse.Namespace) -> int:
    """check that PATCH applies to OLD and yields its target; writes nothing"""
    from lorien.repo.engine import verify_patch

    with Progress("verify-patch", quiet=args.quiet) as progress:
        result = verify_patch(args.old, args.patch, progress=progress.bytes(f"{args.patch.name} checked"))
    print(f"ok: {args.patch} turns {args.old} into {result.target_size} bytes with sha256 {result.target_sha256}")
    return 0


def _add_verify_patch(commands: Commands) -> None:
    command = add_command(commands, "verify-patch", _verify_patch, doing="verifying the patch")
    command.add_argument("old", type=Path, help="model file the patch was made from")
    command.add_argument("patch", type=Path, help="patch file (lorien diff)")
    add_quiet_option(command)


def _patch_info(args: argparse.Namespace) -> int:
    """show a patch's header and segments"""
    from lorien.repo.engine import patch_info, segment_summary

    info = patch_info(args.patch).to_dict()
    summary = segment_summary(args.patch)
    if args.json:
        print_fields({**info, "segments": summary}, as_json=True)
        return 0
    for key in ("source_sha256", "target_sha256"):
        if len(info[key]) < 64:  # the compact layout keeps a digest's first 8 bytes (docs/patch-format.md)
            info[key] = f"{info[key]}… (first {len(info[key]) // 2} bytes)"
    print_fields(info, as_json=False)
    for codec, counts in summary.items():
        print(
            f"{'segments':<14} {codec}: {counts['count']} covering {counts['target_bytes']} bytes, "
            f"payload {counts['payload_bytes']} bytes"
        )
    return 0


def _add_patch_info(commands: Commands) -> None:
    command = add_command(commands, "patch-info", _patch_info, doing="reading the patch")
    command.add_argument("patch", type=Path, help="patch file (lorien diff)")
    add_json_option(command)


def register(commands: Commands) -> None:
    _add_diff(commands)
    _add_apply(commands)
    _add_verify_patch(commands)
    _add_patch_info(commands)
