"""The publisher's commands: ``publish`` and ``watch`` (models directory → static repository), ``gc`` (remove
blobs nothing references any more) and ``nginx-config`` (serve the repository with nginx).

Each command's arguments are added next to its handler, whose docstring is the command's help; ``publish`` and
``watch`` share their options for the models, the repository and the manifests, which end up in one
:class:`~publisher.options.PublishOptions`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lorien.cli._options import (
    Commands,
    add_command,
    add_engine_option,
    add_json_option,
    add_max_patch_format_option,
    add_max_patch_ratio_option,
    add_quiet_option,
    add_sign_key_option,
    load_sign_keys,
    max_patch_format,
    print_problems,
)
from lorien.cli._progress import Progress
from lorien.repo.errors import BadInputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from lorien.publisher.publish import PublishOptions, PublishReport


def _add_models_and_repository(command: argparse.ArgumentParser) -> None:
    """Where publish and watch read models and write the repository, and how many patches they make."""
    command.add_argument("--models", type=Path, required=True, help="models directory")
    command.add_argument("--repo", type=Path, required=True, help="repository directory (created if missing)")
    command.add_argument(
        "--keep", type=int, default=3, help="make patches from this many previous versions (default 3)"
    )
    add_quiet_option(command)


def _add_manifest_options(command: argparse.ArgumentParser) -> None:
    """How publish and watch sign, date and sequence manifests, and which engine makes their patches."""
    add_sign_key_option(
        command,
        "ed25519 private key (lorien keygen) of a TUF role the repository's root names: each signs the targets, "
        "snapshot and timestamp metadata it may (repeat for several keys). A new repository gets a TUF root with "
        "these keys in every role (`lorien trust` changes that)",
    )
    command.add_argument(
        "--expiry",
        action="append",
        default=[],
        metavar="ROLE=DAYS",
        help="days TUF metadata stays valid: timestamp (default 1), snapshot (7), targets (30); renewed when half "
        "is gone (lorien watch does it unattended)",
    )
    command.add_argument(
        "--legacy-signatures",
        action="store_true",
        help="migration only: also write the old detached .sig files for devices not yet switched to TUF",
    )
    command.add_argument(
        "--expires-days",
        dest="expires_days",
        type=float,
        default=7.0,
        help="manifests expire this many days after being written; devices refuse expired ones (default 7; "
        "0 = never). Re-publishing renews them once half the period has passed",
    )
    downgrade = command.add_mutually_exclusive_group()
    downgrade.add_argument(
        "--allow-downgrade",
        dest="allow_downgrade",
        action="store_const",
        const=True,
        help="let devices on a newer (e.g. withdrawn) version install latest; stays set until --forbid-downgrade",
    )
    downgrade.add_argument(
        "--forbid-downgrade",
        dest="allow_downgrade",
        action="store_const",
        const=False,
        help="undo --allow-downgrade: devices on a newer version keep it instead of installing an older latest "
        "(the default)",
    )
    command.add_argument(
        "--min-sequence",
        dest="min_sequence",
        type=int,
        default=0,
        help="start manifest sequences at least here (after rebuilding a repository devices already follow)",
    )
    add_engine_option(command)
    add_max_patch_format_option(command)
    command.add_argument(
        "--no-compressed",
        dest="compress",
        action="store_false",
        help="do not store the newest version compressed on its own (by default it is, when that saves >= 5 %%; "
        "devices with no usable version download it instead of the raw model)",
    )


def _publish_options(args: argparse.Namespace, progress: Progress, **extra: object) -> PublishOptions:
    """The options of publish and watch; publish() and the watcher check them."""
    from lorien.publisher.publish import PublishOptions

    keys = load_sign_keys(args)
    if len({key.keyid for key in keys}) != len(keys):
        raise BadInputError("--sign-key: the same key was given twice")
    from lorien.publisher.tuf_writer import Expiry

    if args.legacy_signatures and not keys:
        raise BadInputError("--legacy-signatures needs --sign-key (the old scheme's publisher key)")
    return PublishOptions(
        keep=args.keep,
        max_patch_ratio=args.max_patch_ratio,
        sign_keys=keys,
        expiry=Expiry.parse(args.expiry),
        legacy_signatures=args.legacy_signatures,
        expires_days=args.expires_days,
        allow_downgrade=args.allow_downgrade,
        min_sequence=args.min_sequence,
        progress=None if args.quiet else progress.update,
        compress=args.compress,
        max_patch_format=max_patch_format(args),
        **extra,
    )


def _add_grace_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--grace",
        type=float,
        default=3600.0,
        help="seconds an unreferenced blob stays before garbage collection (default 3600; 0 = remove now)",
    )


def _publish(args: argparse.Namespace) -> int:
    """publish MODELS/<family>/<version>.<ext> into a static repository"""
    from lorien.publisher.publish import publish

    with Progress("publish", quiet=args.quiet) as progress:
        report = publish(args.models, args.repo, engine=args.engine, options=_publish_options(args, progress))
    if args.json:
        for event in report.events():
            print(json.dumps(event), flush=True)
    else:
        _print_publish_report(report, args.repo)
    print_problems(report.all_problems())
    return 0 if report.ok else 2


def _print_publish_report(report: PublishReport, repo: Path) -> None:
    for family in report.families:
        if family.problems:
            print(f"{family.family}: not published ({len(family.problems)} problem(s))")
            continue
        patches = ", ".join(
            f"{src}→{dst} {stats.patch_size} B ({100 * stats.ratio:.1f}% of full, {stats.seconds:.1f}s)"
            for src, dst, stats in family.patches_created
        )
        state = "manifest updated" if family.manifest_written else "unchanged"
        print(
            f"{family.family}: {family.versions} versions, latest {family.latest}, {state}"
            + (f"; new patches: {patches}" if patches else "")
        )
        for version, stats, kept in family.compressed:
            size = f"{stats.patch_size} B ({100 * stats.ratio:.1f}% of full, {stats.seconds:.1f}s)"
            print(
                f"{family.family}: {version} compressed: {size}" + ("" if kept else ", saves too little: not kept")
            )
        for version in family.withdrawn:
            print(f"{family.family}: withdrew {version}")
        for src, dst, stats in family.patches_rejected:
            print(
                f"{family.family}: no patch {src}→{dst}: {stats.patch_size} B is {100 * stats.ratio:.1f}% of full, "
                "over --max-patch-ratio; devices take the full model"
            )
    for family in report.refreshed:
        print(f"{family}: manifest renewed (expiry, sequence or signature)")
    print(f"index.json {'updated' if report.index_written else 'unchanged'}: {repo / 'index.json'}")


def _add_publish(commands: Commands) -> None:
    command = add_command(commands, "publish", _publish, doing="publishing")
    _add_models_and_repository(command)
    add_max_patch_ratio_option(command, default=None)
    _add_manifest_options(command)
    add_json_option(command, "print one JSON object per event (published, withdrawn, renewed, problem, …)")


def _watch(args: argparse.Namespace) -> int:
    """publish model files as they land (inotify via watchdog), safely"""
    from lorien.publisher.watch import Watcher, WatchSettings

    if args.settle < 0 or args.grace < 0:
        raise BadInputError("--settle and --grace must be >= 0")
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    with Progress("watch", quiet=args.quiet) as progress:
        options = _publish_options(args, progress, lenient=True)
        settings = WatchSettings(
            args.models, args.repo, options, args.engine, args.settle, args.grace, args.after_publish, args.json
        )
        return Watcher(settings, _watch_metrics(args.metrics_host, args.metrics_port)).run()


def _watch_metrics(host: str, port: int | None) -> Callable[[PublishReport | None, float], None] | None:
    """With ``--metrics-port``: serve watch's metrics and return the hook that feeds them."""
    if port is None:
        return None
    from lorien.publisher.metrics import WatchMetrics

    metrics = WatchMetrics()
    print(f"lorien watch: metrics at {metrics.serve(host, port)}", file=sys.stderr, flush=True)
    return metrics.published


def _add_watch(commands: Commands) -> None:
    command = add_command(commands, "watch", _watch, doing="watching and publishing")
    _add_models_and_repository(command)
    command.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds a file's size and mtime must stay unchanged (default 2; renames need none)",
    )
    _add_grace_option(command)
    add_max_patch_ratio_option(command, default=0.9)
    command.add_argument(
        "--after-publish",
        dest="after_publish",
        help="shell command run after each publish that changed something ($LORIEN_REPO is set)",
    )
    command.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0 picks a free port, printed at start)",
    )
    command.add_argument(
        "--metrics-host",
        dest="metrics_host",
        default="127.0.0.1",
        help="address of --metrics-port (default 127.0.0.1)",
    )
    _add_manifest_options(command)
    add_json_option(command, "print one JSON object per event (published, withdrawn, renewed, gc, …)")


def _gc(args: argparse.Namespace) -> int:
    """remove blobs no manifest has referenced for --grace seconds"""
    from lorien.publisher.gc import collect_garbage
    from lorien.repo.lock import repository_lock

    if not args.repo.is_dir():
        raise BadInputError(f"{args.repo}: repository directory does not exist")
    with repository_lock(args.repo):
        report = collect_garbage(args.repo, args.grace, dry_run=args.dry_run)
    for blob in report.removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {blob}")
    for blob, seconds in sorted(report.waiting.items()):
        print(f"kept {blob}: unreferenced, may go in {seconds:.0f} s")
    if report.problems:
        print_problems(report.problems, " (nothing deleted)")
        return 2
    print(report.summary(args.dry_run))
    return 0


def _add_gc(commands: Commands) -> None:
    command = add_command(commands, "gc", _gc, doing="collecting unreferenced blobs")
    command.add_argument("repo", type=Path, help="repository directory")
    _add_grace_option(command)
    command.add_argument(
        "--dry-run", dest="dry_run", action="store_true", help="list what would be removed; remove nothing"
    )


def _nginx_config(args: argparse.Namespace) -> int:
    """write an nginx.conf serving a repository (unprivileged)"""
    from lorien.publisher.nginx_config import write_nginx_config

    config = write_nginx_config(args.repo, args.listen, args.prefix, user=args.user)
    print(f"wrote {config} and {config.parent / 'lorien-site.conf'}; run:")
    print(f"  nginx -p {config.parent} -c {config} -g 'daemon off;'")
    return 0


def _add_nginx_config(commands: Commands) -> None:
    command = add_command(commands, "nginx-config", _nginx_config, doing="writing the nginx configuration")
    command.add_argument("--repo", type=Path, required=True, help="repository directory")
    command.add_argument("--listen", required=True, help="HOST:PORT or PORT, e.g. 127.0.0.1:8080")
    command.add_argument("--prefix", type=Path, required=True, help="directory for nginx.conf, logs/ and tmp/")
    command.add_argument(
        "--user", help="workers' user when nginx starts as root (its default, nobody, may not read REPO)"
    )


def register(commands: Commands) -> None:
    _add_publish(commands)
    _add_watch(commands)
    _add_nginx_config(commands)
    _add_gc(commands)
