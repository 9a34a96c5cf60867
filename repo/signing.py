"""Ed25519 signatures on repository metadata: key files, detached ``.sig`` documents, verification.

Data flow::

    publisher: document bytes ──sign(message(path, bytes), key…)──▶ <path>.sig (JSON, one entry per key)
    device:    <path>.sig + document bytes ──verify against trusted keys──▶ key id that signed, or SignatureError
               (only then are the bytes parsed)

What is signed is :func:`signed_message`: a fixed context string, the document's repository path and the exact
bytes served. Binding the path means a manifest signed for one family cannot be replayed as another family's
manifest, and signing bytes (not re-serialized JSON) means nothing has to be canonicalized to verify, and the
JSON parser never sees metadata that is not signed. The ``.sig`` file also records the document's size and
SHA-256, so a mismatch can be told apart ("this signature is for other bytes") from a bad signature.

Key files are PEM: the private key PKCS#8 (mode 0600), the public key SubjectPublicKeyInfo. A key's id is the
SHA-256 of its raw 32-byte public key, in hex.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lorien.repo.atomic import atomic_writer, canonical_json
from lorien.repo.errors import BadInputError, SignatureError
from lorien.repo.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

SIGNATURE_SUFFIX = ".sig"
SIGNATURE_SCHEMA = 1
ALGORITHM = "ed25519"
_CONTEXT = b"lorien-metadata-signature-v1\n"


def signature_path(document_path: str) -> str:
    return document_path + SIGNATURE_SUFFIX


def signed_message(document_path: str, data: bytes) -> bytes:
    return _CONTEXT + document_path.encode("utf-8") + b"\n" + data


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    keyid: str
    source: str


@dataclass(frozen=True)
class TrustedKey:
    public: Ed25519PublicKey
    keyid: str
    source: str


# ---------------------------------------------------------------------------------------------- key files


def generate_keypair(out_dir: Path, name: str = "lorien") -> tuple[Path, Path, str]:
    """Write ``<name>.key`` (0600) and ``<name>.pub`` into ``out_dir``; never overwrite an existing key."""
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise BadInputError(
                f"{path}: already exists; refusing to overwrite a key (choose another --out/--name)"
            )
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_writer(private_path, mode=0o600) as handle:
            handle.write(private_pem)
        with atomic_writer(public_path, mode=0o644) as handle:
            handle.write(public_pem)
    except OSError as error:
        with contextlib.suppress(OSError):
            private_path.unlink()  # never leave half a key pair
        raise BadInputError(f"{out_dir}: cannot write the key pair: {error.strerror or error}") from None
    return private_path, public_path, key_id(private.public_key())


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(
            f"{path}: {what} file does not exist (create one with `lorien keygen --out DIR`)"
        ) from None
    except OSError as error:
        raise BadInputError(f"{path}: cannot read {what}: {error.strerror}") from None
    if len(data) > 16 * 1024:
        raise BadInputError(f"{path}: too large to be a {what} ({len(data)} bytes)")
    return data


def load_signing_key(path: Path) -> SigningKey:
    data = _read_key_file(path, "private key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise BadInputError(f"{path}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise BadInputError(f"{path}: is a {type(private).__name__}; lorien signs with ed25519 keys only")
    if os.stat(path).st_mode & 0o077:
        log.warning("%s: private key is readable by group or others; chmod 600 it", path)
    return SigningKey(private, key_id(private.public_key()), str(path))


def load_trusted_key(path: Path) -> TrustedKey:
    data = _read_key_file(path, "public key")
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise BadInputError(f"{path}: not a PEM public key ({error})") from None
    if not isinstance(public, Ed25519PublicKey):
        raise BadInputError(f"{path}: is a {type(public).__name__}; lorien verifies ed25519 keys only")
    return TrustedKey(public, key_id(public), str(path))


# ---------------------------------------------------------------------------------------------- sign / verify


def sign_document(data: bytes, document_path: str, keys: Sequence[SigningKey]) -> bytes:
    """The bytes of ``<document_path>.sig``: one ed25519 signature per key over :func:`signed_message`."""
    if not keys:
        raise ValueError("sign_document needs at least one key")
    message = signed_message(document_path, data)
    return canonical_json(
        {
            "schema": SIGNATURE_SCHEMA,
            "document": document_path,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "signatures": [
                {
                    "keyid": key.keyid,
                    "algorithm": ALGORITHM,
                    "signature": base64.b64encode(key.private.sign(message)).decode("ascii"),
                }
                for key in keys
            ],
        }
    )


@dataclass(frozen=True)
class _Entry:
    keyid: str
    signature: bytes


def _parse_signature_file(raw: bytes, where: str, limits: Limits) -> tuple[dict, list[_Entry]]:
    if len(raw) > limits.max_signature_bytes:
        raise SignatureError(f"{where}: {len(raw)} bytes exceed the {limits.max_signature_bytes}-byte limit")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SignatureError(f"{where}: not a valid signature file (not UTF-8 JSON)") from None
    if not isinstance(doc, dict) or doc.get("schema") != SIGNATURE_SCHEMA:
        raise SignatureError(f"{where}: not a lorien signature file of schema {SIGNATURE_SCHEMA}")
    entries = doc.get("signatures")
    if not isinstance(entries, list) or not entries or len(entries) > 64:
        raise SignatureError(f"{where}: 'signatures' must be a list of 1 to 64 entries")
    parsed = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("algorithm") != ALGORITHM:
            raise SignatureError(f"{where}: signatures[{index}] is not an {ALGORITHM} signature")
        keyid, text = entry.get("keyid"), entry.get("signature")
        if not isinstance(keyid, str) or not isinstance(text, str) or len(text) > 200:
            raise SignatureError(f"{where}: signatures[{index}] needs string 'keyid' and 'signature'")
        try:
            signature = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError(f"{where}: signatures[{index}].signature is not base64") from None
        parsed.append(_Entry(keyid, signature))
    return doc, parsed


def verify_document(
    data: bytes,
    document_path: str,
    signature_file: bytes,
    trusted: Sequence[TrustedKey],
    where: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> str:
    """Return the id of a trusted key whose signature over ``data`` is valid, else raise SignatureError."""
    where = where or signature_path(document_path)
    if not trusted:
        raise SignatureError(f"{where}: no trusted keys configured to verify it with")
    doc, entries = _parse_signature_file(signature_file, where, limits)
    if doc.get("document") != document_path:
        raise SignatureError(
            f"{where}: signature is for {doc.get('document')!r}, not {document_path!r} (a signature file moved "
            "between documents is refused)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if doc.get("sha256") != digest or doc.get("size") != len(data):
        raise SignatureError(
            f"{where}: signature is for other bytes than {document_path} ({doc.get('size')} bytes, sha256 "
            f"{str(doc.get('sha256'))[:16]}…; got {len(data)} bytes, {digest[:16]}…): the document was modified "
            "after signing, or a publish is in progress"
        )
    by_id = {key.keyid: key for key in trusted}
    message = signed_message(document_path, data)
    known = [entry for entry in entries if entry.keyid in by_id]
    for entry in known:
        try:
            by_id[entry.keyid].public.verify(entry.signature, message)
            return entry.keyid
        except InvalidSignature:
            continue
    signers = ", ".join(entry.keyid[:16] for entry in entries)
    if not known:
        trusted_ids = ", ".join(key.keyid[:16] for key in trusted)
        raise SignatureError(
            f"{where}: signed only by key(s) {signers}, none of which is trusted (trusted: {trusted_ids}); "
            "add the publisher's public key to trusted_keys if it is genuine"
        )
    raise SignatureError(
        f"{where}: the signature by trusted key {known[0].keyid[:16]} does not match the document"
    )
