"""Commands that need no repository: ``keygen`` (a signing key pair), ``fingerprint`` (identify a model file the
way Mallorn does) and ``demo`` (the whole flow end to end in a temporary directory).

Each command's arguments are added next to its handler, whose docstring is the command's help.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lorien.cli._options import Commands, add_command, add_json_option, print_fields


def _fingerprint(args: argparse.Namespace) -> int:
    """Mallorn-compatible fingerprint of a model file"""
    from lorien.repo.fingerprint import fingerprint, sampled_hash

    result = fingerprint(args.file)
    # The Mallorn fields, then lorien's sampled hash (what a lorien-aware client sends to /check-update when
    # several versions share one Mallorn identity, docs/fingerprint.md).
    fields = {**result.to_dict(), "sampled_sha256": sampled_hash(args.file)}
    print_fields(fields, args.json)
    if result.short_id_is_ambiguous and not args.json:
        print("note: files under 68 KiB all share this short_id; identify them by size + header/tail hash")
    return 0


def _add_fingerprint(commands: Commands) -> None:
    command = add_command(commands, "fingerprint", _fingerprint, doing="fingerprinting the file")
    command.add_argument("file", type=Path, help="model file")
    add_json_option(command)


def _keygen(args: argparse.Namespace) -> int:
    """write an ed25519 key pair for signing repository metadata"""
    from lorien.repo.signing import generate_keypair

    private, public, keyid = generate_keypair(args.out, args.name)
    print(f"private key {private} (mode 0600: keep it on the publisher only)")
    print(f"public key  {public} (name it in the repository's TUF root: lorien trust init / add-key)")
    print(f"key id      {keyid}")
    return 0


def _add_keygen(commands: Commands) -> None:
    command = add_command(commands, "keygen", _keygen, doing="writing the key pair")
    command.add_argument("--out", type=Path, required=True, help="directory for NAME.key (0600) and NAME.pub")
    command.add_argument("--name", default="lorien", help="file name stem (default lorien)")


def _demo(args: argparse.Namespace) -> int:
    """end-to-end demo on embedded defaults in a temporary directory"""
    from lorien.demo import run_demo

    return run_demo(keep=args.keep)


def _add_demo(commands: Commands) -> None:
    command = add_command(commands, "demo", _demo, doing="running the demo")
    command.add_argument("--keep", action="store_true", help="keep the temporary directory")


def register(commands: Commands) -> None:
    _add_fingerprint(commands)
    _add_keygen(commands)
    _add_demo(commands)
