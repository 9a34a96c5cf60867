"""``lorien`` command line: one parser, one subcommand per job, errors as one line and a non-zero exit.

Exit codes: 0 success; 1 verification found problems (``inspect --verify``, integrity); 2 bad input (also
argparse's usage errors); 3 repository locked by another writer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from lorien.repo.errors import LorienError

DEFAULT_ENGINE = "lorien"
ENGINE_NAMES = ("lorien", "zstd", "mallorn")


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    from lorien.repo.fingerprint import fingerprint

    result = fingerprint(args.file)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for key, value in result.to_dict().items():
            print(f"{key:<14} {value}")
        if result.short_id_is_ambiguous:
            print("note: files under 68 KiB all share this short_id; identify them by size + header/tail hash")
    return 0


def _publish_options(args: argparse.Namespace, **extra: object):  # -> PublishOptions
    from lorien.publisher.publish import PublishOptions
    from lorien.repo.signing import load_signing_key

    keys = tuple(load_signing_key(path) for path in args.sign_key or ())
    if len({key.keyid for key in keys}) != len(keys):
        raise LorienError("--sign-key: the same key was given twice")
    options = PublishOptions(
        keep=args.keep,
        sign_keys=keys,
        expires_days=args.expires_days,
        allow_downgrade=args.allow_downgrade,
        min_sequence=args.min_sequence,
        **extra,
    )
    return options  # publish() and the watcher check it


def _cmd_keygen(args: argparse.Namespace) -> int:
    from lorien.repo.signing import generate_keypair

    private, public, keyid = generate_keypair(args.out, args.name)
    print(f"private key {private} (mode 0600: keep it on the publisher only)")
    print(f"public key  {public} (copy to devices, list it in trusted_keys)")
    print(f"key id      {keyid}")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from lorien.publisher.publish import publish

    report = publish(args.models, args.repo, engine=args.engine, options=_publish_options(args))
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
    for family in report.refreshed:
        print(f"{family}: manifest renewed (expiry, sequence or signature)")
    print(f"index.json {'updated' if report.index_written else 'unchanged'}: {args.repo / 'index.json'}")
    for problem in report.all_problems():
        print(f"error: {problem}", file=sys.stderr)
    return 0 if report.ok else 2


def _cmd_diff(args: argparse.Namespace) -> int:
    from lorien.repo.engine import create_patch

    stats = create_patch(args.old, args.new, args.output, engine=args.engine)
    print(
        f"{args.output}: {stats.patch_size} bytes, {100 * stats.ratio:.2f}% of the {stats.target_size}-byte new "
        f"model (engine {stats.engine}, {stats.seconds:.2f}s)"
    )
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from lorien.repo.engine import apply_patch

    result = apply_patch(args.old, args.patch, args.output)
    print(
        f"{args.output}: {result.target_size} bytes, sha256 {result.target_sha256} verified (engine {result.engine})"
    )
    return 0


def _cmd_verify_patch(args: argparse.Namespace) -> int:
    from lorien.repo.engine import verify_patch

    result = verify_patch(args.old, args.patch)
    print(f"ok: {args.patch} turns {args.old} into {result.target_size} bytes with sha256 {result.target_sha256}")
    return 0


def _cmd_patch_info(args: argparse.Namespace) -> int:
    from lorien.repo.engine import patch_info, segment_summary

    info = patch_info(args.patch)
    summary = segment_summary(args.patch)
    if args.json:
        print(json.dumps({**info.to_dict(), "segments": summary}, indent=2))
        return 0
    for key, value in info.to_dict().items():
        print(f"{key:<14} {value}")
    for codec, counts in summary.items():
        print(
            f"{'segments':<14} {codec}: {counts['count']} covering {counts['target_bytes']} bytes, "
            f"payload {counts['payload_bytes']} bytes"
        )
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from lorien.publisher.watch import Watcher, WatchSettings

    if args.keep < 0 or args.settle < 0 or args.grace < 0 or not 0 < args.max_patch_ratio <= 10:
        raise LorienError("--keep, --settle and --grace must be >= 0 and --max-patch-ratio in (0, 10]")
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    options = _publish_options(args, max_patch_ratio=args.max_patch_ratio, lenient=True)
    settings = WatchSettings(
        args.models, args.repo, options, args.engine, args.settle, args.grace, args.after_publish
    )
    return Watcher(settings).run()


def _cmd_nginx_config(args: argparse.Namespace) -> int:
    from lorien.publisher.nginx_config import write_nginx_config

    config = write_nginx_config(args.repo, args.listen, args.prefix, user=args.user)
    print(f"wrote {config} and {config.parent / 'lorien-site.conf'}; run:")
    print(f"  nginx -p {config.parent} -c {config} -g 'daemon off;'")
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from lorien.publisher.gc import collect_garbage
    from lorien.repo.lock import repository_lock

    if not args.repo.is_dir():
        raise LorienError(f"{args.repo}: repository directory does not exist")
    with repository_lock(args.repo):
        report = collect_garbage(args.repo, args.grace)
    for blob in report.removed:
        print(f"removed {blob}")
    for blob, seconds in sorted(report.waiting.items()):
        print(f"kept {blob}: unreferenced, may go in {seconds:.0f} s")
    for problem in report.problems:
        print(f"error: {problem} (nothing deleted)", file=sys.stderr)
    return 2 if report.problems else 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from lorien.repo.fetch import open_repository
    from lorien.repo.inspect import inspect_repository, render_text
    from lorien.repo.signing import load_trusted_key

    keys = tuple(load_trusted_key(path) for path in args.key or ())
    report = inspect_repository(open_repository(args.repo), verify=args.verify, keys=keys)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render_text(report, args.verify))
    return 0 if report.ok else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from lorien.publisher.serve import serve
    from lorien.repo.signing import load_signing_key

    keys = tuple(load_signing_key(path) for path in args.sign_key or ())
    serve(args.repo, host=args.host, port=args.port, admin_token=args.admin_token, sign_keys=keys)
    return 0


def _cmd_device(args: argparse.Namespace) -> int:
    from lorien.device.api import serve
    from lorien.device.config import check_environment, load_config
    from lorien.device.report import Callbacks, setup_logging
    from lorien.device.updater import Updater

    overrides = {
        key: getattr(args, key)
        for key in (
            "repo_url",
            "family",
            "model_path",
            "state_dir",
            "host",
            "port",
            "api_token",
            "check_interval",
            "callback_url",
            "keep_backups",
        )
    }
    if args.health_check:
        overrides["health_check"] = args.health_check
    if args.health_check_litert:
        overrides["health_check_litert"] = True
    for key in ("health_timeout", "stop_timeout"):
        overrides[key] = getattr(args, key)
    if args.trusted_key:
        overrides["trusted_keys"] = [str(path) for path in args.trusted_key]
    if args.insecure_allow_unsigned:
        overrides["insecure_allow_unsigned"] = True
    if args.service_unit:
        overrides["service"] = args.service_unit
    elif args.service_command:
        overrides["service"] = {"command": args.service_command.split(), "pid_file": args.service_pid_file}
    config = load_config(args.config, overrides)
    check_environment(config)
    setup_logging(config.log_dir, args.verbose)
    serve(Updater(config, Callbacks(config.callback_url)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lorien.demo import run_demo

    return run_demo(keep=args.keep)


def _add_metadata_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--sign-key",
        dest="sign_key",
        type=Path,
        action="append",
        help="ed25519 private key (lorien keygen); writes manifest.json.sig and index.json.sig. Repeat during a "
        "key rotation to sign with the old and the new key",
    )
    sub.add_argument(
        "--expires-days",
        dest="expires_days",
        type=float,
        default=7.0,
        help="manifests expire this many days after being written; devices refuse expired ones (default 7; "
        "0 = never). Re-publishing renews them once half the period has passed",
    )
    downgrade = sub.add_mutually_exclusive_group()
    downgrade.add_argument(
        "--allow-downgrade",
        dest="allow_downgrade",
        action="store_const",
        const=True,
        help="let devices on a newer (e.g. withdrawn) version install latest; stays set until --forbid-downgrade",
    )
    downgrade.add_argument("--forbid-downgrade", dest="allow_downgrade", action="store_const", const=False)
    sub.add_argument(
        "--min-sequence",
        dest="min_sequence",
        type=int,
        default=0,
        help="start manifest sequences at least here (after rebuilding a repository devices already follow)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorien", description="Ship ML model updates to edge devices as small, verified delta patches."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    sub = add("fingerprint", _cmd_fingerprint, "Mallorn-compatible fingerprint of a model file")
    sub.add_argument("file", type=Path)
    sub.add_argument("--json", action="store_true", help="print JSON")

    sub = add("keygen", _cmd_keygen, "write an ed25519 key pair for signing repository metadata")
    sub.add_argument("--out", type=Path, required=True, help="directory for NAME.key (0600) and NAME.pub")
    sub.add_argument("--name", default="lorien", help="file name stem (default lorien)")

    sub = add("publish", _cmd_publish, "publish MODELS/<family>/<version>.<ext> into a static repository")
    sub.add_argument("--models", type=Path, required=True, help="models directory")
    sub.add_argument("--repo", type=Path, required=True, help="repository directory (created if missing)")
    sub.add_argument(
        "--keep", type=int, default=3, help="make patches from this many previous versions (default 3)"
    )
    _add_metadata_options(sub)
    sub.add_argument("--engine", default=DEFAULT_ENGINE, help=f"patch engine (default {DEFAULT_ENGINE})")

    sub = add("watch", _cmd_watch, "publish model files as they land (inotify via watchdog), safely")
    sub.add_argument("--models", type=Path, required=True, help="models directory")
    sub.add_argument("--repo", type=Path, required=True, help="repository directory (created if missing)")
    sub.add_argument(
        "--keep", type=int, default=3, help="make patches from this many previous versions (default 3)"
    )
    sub.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds a file's size and mtime must stay unchanged (default 2; renames need none)",
    )
    sub.add_argument(
        "--grace",
        type=float,
        default=3600.0,
        help="seconds an unreferenced blob stays before garbage collection (default 3600)",
    )
    sub.add_argument(
        "--max-patch-ratio",
        dest="max_patch_ratio",
        type=float,
        default=0.9,
        help="do not publish a patch larger than this share of the full model (default 0.9)",
    )
    sub.add_argument(
        "--after-publish",
        dest="after_publish",
        help="shell command run after each publish that changed something ($LORIEN_REPO is set)",
    )
    _add_metadata_options(sub)
    sub.add_argument("--engine", default=DEFAULT_ENGINE, help=f"patch engine (default {DEFAULT_ENGINE})")

    sub = add("nginx-config", _cmd_nginx_config, "write an nginx.conf serving a repository (unprivileged)")
    sub.add_argument("--repo", type=Path, required=True, help="repository directory")
    sub.add_argument("--listen", required=True, help="HOST:PORT or PORT, e.g. 127.0.0.1:8080")
    sub.add_argument("--prefix", type=Path, required=True, help="directory for nginx.conf, logs/ and tmp/")
    sub.add_argument(
        "--user", help="workers' user when nginx starts as root (its default, nobody, may not read REPO)"
    )

    sub = add("gc", _cmd_gc, "remove blobs no manifest has referenced for --grace seconds")
    sub.add_argument("repo", type=Path)
    sub.add_argument("--grace", type=float, default=3600.0, help="seconds (default 3600; 0 = remove now)")

    sub = add("diff", _cmd_diff, "create a patch that turns OLD into NEW")
    sub.add_argument("old", type=Path)
    sub.add_argument("new", type=Path)
    sub.add_argument("-o", "--output", type=Path, required=True, help="patch file to write")
    sub.add_argument(
        "--engine", default=DEFAULT_ENGINE, help=f"{' | '.join(ENGINE_NAMES)} (default {DEFAULT_ENGINE})"
    )

    sub = add("apply", _cmd_apply, "apply PATCH to OLD and write the verified result (atomically) to -o")
    sub.add_argument("old", type=Path)
    sub.add_argument("patch", type=Path)
    sub.add_argument("-o", "--output", type=Path, required=True, help="model file to write")

    sub = add(
        "verify-patch", _cmd_verify_patch, "check that PATCH applies to OLD and yields its target; writes nothing"
    )
    sub.add_argument("old", type=Path)
    sub.add_argument("patch", type=Path)

    sub = add("patch-info", _cmd_patch_info, "show a patch's header and segments")
    sub.add_argument("patch", type=Path)
    sub.add_argument("--json", action="store_true", help="print JSON")

    sub = add("inspect", _cmd_inspect, "show a repository (directory or http(s) URL)")
    sub.add_argument("repo", help="repository directory or base URL")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.add_argument("--verify", action="store_true", help="re-hash every referenced blob")
    sub.add_argument(
        "--key",
        type=Path,
        action="append",
        help="trusted public key: index.json and every manifest must be signed by it (repeatable)",
    )

    sub = add("serve", _cmd_serve, "serve a repository over HTTP (waitress) with the Mallorn seed endpoints")
    sub.add_argument("repo", type=Path)
    sub.add_argument("--host", default="127.0.0.1")
    sub.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    sub.add_argument("--admin-token", default=None, help="enables POST /create-patch for this bearer token")
    sub.add_argument(
        "--sign-key",
        dest="sign_key",
        type=Path,
        action="append",
        help="publisher key: POST /create-patch re-signs the manifest it changes (required for a signed repository)",
    )

    sub = add("device", _cmd_device, "run the device updater service (HTTP API on 127.0.0.1:12315 by default)")
    sub.add_argument("--config", type=Path, help="device.toml (every option below can also be set there)")
    sub.add_argument("--repo-url", dest="repo_url", help="base URL of the repository")
    sub.add_argument("--family", help="model family to follow")
    sub.add_argument("--model-path", dest="model_path", help="the model file the application loads")
    sub.add_argument("--state-dir", dest="state_dir", help="tmp/, backups/, logs/ and state.json live here")
    sub.add_argument("--host", help="API address (default 127.0.0.1; others need api_token)")
    sub.add_argument("--port", type=int, help="API port (default 12315; 0 picks a free one)")
    sub.add_argument("--api-token", dest="api_token", help="bearer token required by mutating requests")
    sub.add_argument("--check-interval", dest="check_interval", type=float, help="seconds; 0 = on request only")
    sub.add_argument("--callback-url", dest="callback_url", help="POST stage changes here (best effort)")
    sub.add_argument("--keep-backups", dest="keep_backups", type=int, help="backups kept (default 2)")
    sub.add_argument("--health-check", dest="health_check", help="command run after deploy; exit 0 = healthy")
    sub.add_argument(
        "--health-check-litert",
        dest="health_check_litert",
        action="store_true",
        help="also load the TFLite model with LiteRT after deploy (needs the litert extra)",
    )
    sub.add_argument("--health-timeout", dest="health_timeout", type=float, help="seconds (default 60)")
    sub.add_argument(
        "--trusted-key",
        dest="trusted_key",
        type=Path,
        action="append",
        help="publisher public key; manifests must be signed by one of these (repeatable, for key rotation)",
    )
    sub.add_argument(
        "--insecure-allow-unsigned",
        dest="insecure_allow_unsigned",
        action="store_true",
        help="accept unsigned or badly signed manifests (anyone on the network path could install anything)",
    )
    sub.add_argument("--service-unit", dest="service_unit", help="systemd unit to stop/start around a deploy")
    sub.add_argument("--service-command", dest="service_command", help="command to start the model's consumer")
    sub.add_argument("--service-pid-file", dest="service_pid_file", help="its pid file (with --service-command)")
    sub.add_argument(
        "--stop-timeout", dest="stop_timeout", type=float, help="SIGTERM→SIGKILL seconds (default 10)"
    )

    sub = add("demo", _cmd_demo, "end-to-end demo on embedded defaults in a temporary directory")
    sub.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except LorienError as error:
        print(f"lorien {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
