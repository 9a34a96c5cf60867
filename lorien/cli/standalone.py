"""Commands that need no repository: ``keygen`` (a signing key pair), ``fingerprint`` (identify a model file the
way Mallorn does) and ``demo`` (the whole flow end to end in a temporary directory).

Each command's arguments are added next to its handler.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorien.cli._options import Commands, add_command, add_json_option


def _fingerprint(args: argparse.Namespace) -> int:
    from lorien.repo.fingerprint import fingerprint, sampled_hash

    result = fingerprint(args.file)
    # The Mallorn fields, then lorien's sampled hash (what a lorien-aware client sends to /check-update when
    # several versions share one Mallorn identity, docs/fingerprint.md).
    fields = {**result.to_dict(), "sampled_sha256": sampled_hash(args.file)}
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        for key, value in fields.items():
            print(f"{key:<14} {value}")
        if result.short_id_is_ambiguous:
            print("note: files under 68 KiB all share this short_id; identify them by size + header/tail hash")
    return 0


def _add_fingerprint(commands: Commands) -> None:
    command = add_command(
        commands,
        "fingerprint",
        _fingerprint,
        "Mallorn-compatible fingerprint of a model file",
        doing="fingerprinting the file",
    )
    command.add_argument("file", type=Path)
    add_json_option(command)


def _keygen(args: argparse.Namespace) -> int:
    from lorien.repo.signing import generate_keypair

    private, public, keyid = generate_keypair(args.out, args.name)
    print(f"private key {private} (mode 0600: keep it on the publisher only)")
    print(f"public key  {public} (copy to devices, list it in trusted_keys)")
    print(f"key id      {keyid}")
    return 0


def _add_keygen(commands: Commands) -> None:
    command = add_command(
        commands,
        "keygen",
        _keygen,
        "write an ed25519 key pair for signing repository metadata",
        doing="writing the key pair",
    )
    command.add_argument("--out", type=Path, required=True, help="directory for NAME.key (0600) and NAME.pub")
    command.add_argument("--name", default="lorien", help="file name stem (default lorien)")


def _demo(args: argparse.Namespace) -> int:
    from lorien.demo import run_demo

    return run_demo(keep=args.keep)


def _add_demo(commands: Commands) -> None:
    command = add_command(
        commands,
        "demo",
        _demo,
        "end-to-end demo on embedded defaults in a temporary directory",
        doing="running the demo",
    )
    command.add_argument("--keep", action="store_true", help="keep the temporary directory")


def register(commands: Commands) -> None:
    _add_fingerprint(commands)
    _add_keygen(commands)
    _add_demo(commands)
