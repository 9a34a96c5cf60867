"""``lorien trust``: a repository's TUF roles and keys (``publisher.trust_admin`` does the work).

    lorien trust init --repo R (--from-key K | --key ROLE=FILE …) [--threshold ROLE=N …] [--sign-key K …]
    lorien trust show --repo R
    lorien trust add-key --repo R ROLE FILE [--sign-key ROOT.key …]
    lorien trust remove-key --repo R ROLE KEYID [--sign-key …]
    lorien trust rotate --repo R ROLE --old KEYID --new FILE [--sign-key …]
    lorien trust set-threshold --repo R ROLE N [--sign-key …]
    lorien trust sign FILE --sign-key K …          (on the offline machine)
    lorien trust commit --repo R FILE [--sign-key …]

Changes that lack root signatures are staged in ``R/.trust/`` and the command exits 1 saying what must sign.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from lorien.cli._options import (
    Commands,
    add_command,
    add_json_option,
    add_sign_key_option,
    load_sign_keys,
    print_fields,
)
from lorien.repo.errors import BadInputError

ROLES = ("root", "targets", "snapshot", "timestamp")  # repo.tufmeta.ROLES, without importing python-tuf to parse


def _admin(args: argparse.Namespace) -> Any:
    from lorien.publisher.options import PublishOptions
    from lorien.publisher.trust_admin import TrustAdmin
    from lorien.publisher.tuf_writer import Expiry

    return TrustAdmin(args.repo, load_sign_keys(args), PublishOptions(expiry=Expiry.parse(args.expiry or [])))


def _locked(args: argparse.Namespace, work) -> int:
    from lorien.repo.lock import repository_lock

    with repository_lock(args.repo):
        result = work(_admin(args))
    return _print_result(result, args.json)


def _print_result(result: Any, as_json: bool) -> int:
    if as_json:
        print_fields(result.to_dict(), as_json=True)
    else:
        if result.installed:
            print(f"root version {result.root_version} installed")
            if result.online_roles_written:
                print(f"re-signed: {', '.join(result.online_roles_written)}")
        else:
            print(f"root version {result.root_version} staged at {result.staged}: {result.missing}")
        for warning in result.warnings:
            print(f"warning: {warning}")
    return 0 if result.installed and not result.warnings else 1


def _init(args: argparse.Namespace) -> int:
    """make the repository a TUF repository: its first root (keys and thresholds per role)"""
    from lorien.publisher.trust_admin import role_key, role_number
    from lorien.repo.signing import load_signing_key

    roles: dict[str, list[Any]] = defaultdict(list)
    if args.from_key:
        key = load_signing_key(args.from_key)
        args.sign_key = [*(args.sign_key or []), args.from_key]
        for role in ROLES:
            roles[role].append(key)
    for text in args.key or []:
        role, key = role_key(text, "--key")
        roles[role].append(key)
    thresholds = dict(role_number(text, "--threshold") for text in args.threshold or [])
    return _locked(args, lambda admin: admin.init(dict(roles), thresholds, from_key=bool(args.from_key)))


def _show(args: argparse.Namespace) -> int:
    """roles, keys, thresholds, versions and expiries of a repository's TUF metadata"""
    from lorien.publisher.trust_admin import TrustAdmin

    shown = TrustAdmin(args.repo, ()).show()
    if args.json:
        print_fields(shown, as_json=True)
        return 0
    print(f"repository {shown['repo']}  (root sha256 {shown['root_sha256'][:16]}…)")
    for role in shown["roles"]:
        keys = ", ".join(keyid[:16] for keyid in role["keyids"])
        print(
            f"  {role['role']:<10} v{role['version'] or '-':<5} expires {role['expires'] or '-':<21} "
            f"threshold {role['threshold']} of {len(role['keyids'])}: {keys}"
        )
    for staged in shown["staged"]:
        print(f"staged, waiting for signatures: {staged}")
    return 0


def _change(args: argparse.Namespace, **kwargs: Any) -> int:
    from lorien.publisher.trust_admin import RootChange

    return _locked(args, lambda admin: admin.change(RootChange(**kwargs)))


def _add_key(args: argparse.Namespace) -> int:
    """add a key to a role (writes the next root version)"""
    from lorien.publisher.trust_admin import role_key

    return _change(args, add=[role_key(f"{args.role}={args.file}", "add-key")])


def _remove_key(args: argparse.Namespace) -> int:
    """remove (revoke) a key from a role (writes the next root version)"""
    return _change(args, remove=[(args.role, args.keyid)])


def _rotate(args: argparse.Namespace) -> int:
    """replace a role's key by a new one in one root version"""
    from lorien.publisher.trust_admin import role_key

    return _change(args, add=[role_key(f"{args.role}={args.new}", "--new")], remove=[(args.role, args.old)])


def _set_threshold(args: argparse.Namespace) -> int:
    """set how many of a role's keys must sign (writes the next root version)"""
    if args.threshold < 1:
        raise BadInputError(f"threshold must be 1 or more, got {args.threshold}")
    return _change(args, thresholds={args.role: args.threshold})


def _sign(args: argparse.Namespace) -> int:
    """add signatures to a staged metadata file (on the machine holding the offline keys)"""
    from lorien.publisher.trust_admin import sign_file

    keyids = sign_file(args.file, load_sign_keys(args))
    print(f"{args.file}: signed by {', '.join(keyid[:16] for keyid in keyids)}")
    return 0


def _commit(args: argparse.Namespace) -> int:
    """install a staged root or targets file once its signatures are complete"""
    return _locked(args, lambda admin: admin.commit(args.file))


def register(commands: Commands) -> None:
    group = commands.add_parser(
        "trust",
        help="TUF roles and keys of a repository",
        description=__doc__.split("\n\n", 1)[1].replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = group.add_subparsers(dest="trust_command", required=True, metavar="COMMAND")

    def command(name: str, handler, doing: str, repo: bool = True) -> argparse.ArgumentParser:
        parser = add_command(sub, name, handler, doing=doing)
        if repo:
            parser.add_argument("--repo", type=Path, required=True, help="repository directory")
        return parser

    def signing(parser: argparse.ArgumentParser) -> None:
        add_sign_key_option(
            parser, "private key that signs what it may: root (old and new), then the online roles"
        )
        parser.add_argument("--expiry", action="append", metavar="ROLE=DAYS", help="validity per role (days)")
        add_json_option(parser)

    init = command("init", _init, "initialising the TUF root")
    init.add_argument(
        "--from-key",
        type=Path,
        help="old-scheme publisher key: becomes every role's key; the "
        "repository's .sig files must verify under it",
    )
    init.add_argument("--key", action="append", metavar="ROLE=FILE", help="a role's key (.pub, or .key to sign)")
    init.add_argument("--threshold", action="append", metavar="ROLE=N", help="signatures a role needs (default 1)")
    signing(init)
    show = command("show", _show, "reading the TUF metadata")
    add_json_option(show)
    add = command("add-key", _add_key, "adding a key")
    add.add_argument("role", choices=ROLES)
    add.add_argument("file", type=Path, help="the key file (.pub or .key)")
    signing(add)
    remove = command("remove-key", _remove_key, "removing a key")
    remove.add_argument("role", choices=ROLES)
    remove.add_argument("keyid", help="TUF key id (or a unique prefix: see `lorien trust show`)")
    signing(remove)
    rotate = command("rotate", _rotate, "rotating a key")
    rotate.add_argument("role", choices=ROLES)
    rotate.add_argument("--old", required=True, help="key id (or unique prefix) to remove")
    rotate.add_argument("--new", required=True, type=Path, help="new key file (.pub or .key)")
    signing(rotate)
    threshold = command("set-threshold", _set_threshold, "setting a threshold")
    threshold.add_argument("role", choices=ROLES)
    threshold.add_argument("threshold", type=int)
    signing(threshold)
    sign = command("sign", _sign, "signing the file", repo=False)
    sign.add_argument("file", type=Path, help="staged metadata file (REPO/.trust/N.root.json or N.targets.json)")
    add_sign_key_option(sign, "private key to sign with (repeatable)")
    commit = command("commit", _commit, "installing the staged metadata")
    commit.add_argument("file", type=Path, help="the signed staged file")
    signing(commit)
