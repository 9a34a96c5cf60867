"""Codec 11 ``COVERS`` (container version 5): the target as approximate copies of the reference at shifting
offsets, plus a sparse byte-difference list and the bytes no copy covers — bsdiff's model, coded compactly.

A block of a model removed or inserted moves everything after it, and the format's metadata (a FlatBuffer's
tables, a zip central directory, a JSON header's offsets, protobuf lengths) changes in scattered bytes that
mostly differ by the same small amounts. A *cover* copies ``x`` bytes from the reference (where the changed
bytes get their difference added), then takes ``y`` new bytes, then moves its position in the reference by
``z``::

    raw stream (then one entropy stage: zstd, raw LZMA2, bzip2 or, from version 6, Brotli — codecs.pack)
      varint C; C × (varint x, varint y, varint zigzag(z))
      varint N; N × varint gap (index into the covers' copied bytes, all concatenated; first = index, then
                index − previous − 1); N difference bytes (added mod 256); the extra bytes (Σy) to the end

Create side (:func:`payload`) uses bsdiff4's suffix-sorting matcher (``bsdiff4.core.diff``), imported only
there, then also tries its runs of new bytes as copies with differences (:func:`absorb_new_bytes`); apply side (:func:`decode`) is numpy and checks every number before using it: positions inside
the reference, covers adding up to the segment exactly, differences inside the copied bytes and increasing,
the extra bytes exactly Σy, a raw stream of at most :func:`max_raw` bytes, at most ``MAX_COVERS`` covers and
``MAX_CHANGES`` changed bytes (bounded memory and work).
"""

from __future__ import annotations

import numpy as np

from lorien.repo.engine import codecs, varints
from lorien.repo.engine.container import Backend
from lorien.repo.errors import PatchError

CONTROL_FIELD = 8  # bsdiff's control numbers: 8 bytes, magnitude little-endian, sign in the top bit
MAX_COVERS = 1 << 16  # per segment: a structural edit has few (each costs the decoder a Python step)
MAX_CHANGES = 1 << 20  # changed bytes per segment (a stream with more is not worth coding as covers)
ABSORB_DIFFERING = 0.75  # a run of new bytes becomes copied bytes when at most this share of them differ


def max_raw(length: int) -> int:
    """The largest raw stream a segment of ``length`` bytes may carry (the encoder emits none larger)."""
    return 2 * length + 4096


# --------------------------------------------------------------------------- create side


def payload(target: bytes, reference: bytes | memoryview, level: int) -> tuple[Backend, bytes] | None:
    """The smallest COVERS payload of ``target`` against ``reference`` and its backend, or None when its raw
    stream would exceed :func:`max_raw` or hold more than ``MAX_COVERS`` covers or ``MAX_CHANGES`` changed
    bytes (nothing much to copy). Two sets of covers are coded, bsdiff's own and the same with its runs of new
    bytes absorbed where they mostly match (:func:`absorb_new_bytes`); the smaller wins."""
    import bsdiff4.core  # create side only: the suffix-sorting matcher (C)

    source = bytes(reference)
    control, differences, extra = bsdiff4.core.diff(source, target)
    found = _controls(control)
    if len(found) > MAX_COVERS:
        return None  # absorbing runs never makes fewer covers
    options = [(found, differences, extra)]
    absorbed = absorb_new_bytes(source, target, found)
    if absorbed != found:
        options.append((absorbed, *_differences(source, target, absorbed)))
    best: tuple[Backend, bytes] | None = None
    for chosen, chosen_differences, chosen_extra in options:
        changes = int(np.count_nonzero(np.frombuffer(chosen_differences, dtype=np.uint8)))
        if len(chosen) > MAX_COVERS or changes > MAX_CHANGES:
            continue
        raw = _raw(chosen, chosen_differences, chosen_extra)
        if len(raw) > max_raw(len(target)):
            continue
        coded = codecs.smallest_pack(raw, level, (Backend.ZSTD, *codecs.other_backends(slow=True)))
        if best is None or len(coded[1]) < len(best[1]):
            best = coded
    return best


def _controls(control: bytes) -> list[tuple[int, int, int]]:
    """bsdiff's control triples, the last one's move set to 0 (it moves past the end: nothing reads it)."""
    numbers = []
    for start in range(0, len(control), CONTROL_FIELD):
        value = int.from_bytes(control[start : start + CONTROL_FIELD], "little")
        numbers.append(-(value & ~(1 << 63)) if value >> 63 else value)
    found = [(numbers[i], numbers[i + 1], numbers[i + 2]) for i in range(0, len(numbers), 3)]
    if found:
        copied, added, _ = found[-1]
        found[-1] = (copied, added, 0)
    return found


def absorb_new_bytes(
    reference: bytes, target: bytes, found: list[tuple[int, int, int]]
) -> list[tuple[int, int, int]]:
    """``found`` with each run of new bytes that mostly matches the reference turned into copied bytes.

    bsdiff extends a copy only while at least half its bytes match, so a table of offsets that each moved by
    the same amount (a FlatBuffer's vector of buffer offsets after a block is removed: two of every four bytes
    change, with borrows) stays new bytes. Such a run lies between two copies: its first ``k`` bytes are
    compared with the reference where the copy before it ends, the rest with the reference just before where
    the copy after it starts (the run's entries shifted by the removal), for the ``k`` that leaves the fewest
    differing bytes. The run is absorbed when at most ``ABSORB_DIFFERING`` of its bytes differ; whether that
    codes smaller is decided by :func:`payload`, which codes both."""
    source = np.frombuffer(reference, dtype=np.uint8)
    wanted = np.frombuffer(target, dtype=np.uint8)
    covers = [list(cover) for cover in found]
    starts = []  # each cover's position in the reference
    at = 0
    for copied, _, move in found:
        starts.append(at)
        at += copied + move
    produced = 0
    for index, (copied, added, _) in enumerate(found):
        run_start = produced + copied
        produced = run_start + added
        if added == 0:
            continue
        run = wanted[run_start : run_start + added]
        after = starts[index] + covers[index][0]  # the reference just past this cover's copy
        forward = max(0, min(added, len(source) - after))
        differs_forward = np.ones(added, dtype=bool)
        differs_forward[:forward] = run[:forward] != source[after : after + forward]
        leading = np.concatenate(([0], np.cumsum(differs_forward)))  # differing bytes of run[:k], aligned forward
        last = index + 1 == len(found)
        if last:
            trailing = np.zeros(added + 1, dtype=np.int64)
            lowest = added  # nothing after the last run to align with
        else:
            following = starts[index + 1]
            backward = min(added, following)
            differs_backward = np.ones(added, dtype=bool)
            differs_backward[added - backward :] = (
                run[added - backward :] != source[following - backward : following]
            )
            trailing = np.concatenate((np.cumsum(differs_backward[::-1])[::-1], [0]))  # of run[k:], aligned back
            lowest = added - backward
        highest = forward
        if lowest > highest:
            continue
        totals = (leading + trailing)[lowest : highest + 1]
        split = lowest + int(np.argmin(totals))
        if totals[split - lowest] > ABSORB_DIFFERING * added:
            continue
        covers[index][0] += split
        covers[index][1] = 0
        if last:
            covers[index][2] = 0
            continue
        moved_start = following - (added - split)
        covers[index][2] = moved_start - (starts[index] + covers[index][0])
        covers[index + 1][0] += added - split
        starts[index + 1] = moved_start
    return [(copied, added, move) for copied, added, move in covers]


def _differences(reference: bytes, target: bytes, found: list[tuple[int, int, int]]) -> tuple[bytes, bytes]:
    """The byte differences of every cover's copied bytes (target − reference, mod 256) and the new bytes."""
    source = np.frombuffer(reference, dtype=np.uint8)
    wanted = np.frombuffer(target, dtype=np.uint8)
    differences, extra = [], []
    at = produced = 0
    for copied, added, move in found:
        differences.append(wanted[produced : produced + copied] - source[at : at + copied])
        extra.append(target[produced + copied : produced + copied + added])
        produced += copied + added
        at += copied + move
    return np.concatenate(differences or [source[:0]]).tobytes(), b"".join(extra)


def _raw(covers: list[tuple[int, int, int]], differences: bytes, extra: bytes) -> bytes:
    out = bytearray(varints.encode(len(covers)))
    for copied, added, move in covers:
        out += varints.encode(copied) + varints.encode(added) + varints.encode(varints.zigzag(move))
    changed = np.flatnonzero(np.frombuffer(differences, dtype=np.uint8))
    out += varints.encode(len(changed))
    previous = -1
    for index in changed.tolist():
        out += varints.encode(index - previous - 1)
        previous = index
    out += np.frombuffer(differences, dtype=np.uint8)[changed].tobytes()
    return bytes(out + extra)


# --------------------------------------------------------------------------- apply side


def decode(payload: bytes, backend: Backend, reference: bytes | memoryview, length: int) -> bytes:
    """Exactly ``length`` bytes, or PatchError."""
    raw = codecs.unpack(payload, backend, None, max_raw(length))
    position = 0

    def number(limit: int, what: str) -> int:
        nonlocal position
        value, position = varints.read(raw, position, limit, f"covers data ({what})")
        return value

    source = np.frombuffer(reference, dtype=np.uint8)
    count = number(min(length + 1, MAX_COVERS), "cover count")
    pieces: list[tuple[int, int, int]] = []  # (reference start, copied, added)
    at = produced = 0
    for _ in range(count):
        copied = number(length - produced, "copied bytes")
        added = number(length - produced - copied, "new bytes")
        move = varints.unzigzag(number(varints.LARGEST, "move"))
        if at + copied > len(source):
            raise PatchError(f"a cover copies {copied} bytes from {at}, past the {len(source)}-byte reference")
        pieces.append((at, copied, added))
        produced += copied + added
        at += copied + move
        if not 0 <= at <= len(source):
            raise PatchError(f"a cover moves to {at}, outside the {len(source)}-byte reference")
    if produced != length:
        raise PatchError(f"covers produce {produced} bytes where the segment needs {length}")
    copied_total = sum(piece[1] for piece in pieces)
    changes = number(min(copied_total, MAX_CHANGES), "changed bytes")
    indexes = np.empty(changes, dtype=np.int64)
    index = -1
    for slot in range(changes):
        index += number(copied_total, "gap") + 1
        indexes[slot] = index
    if changes and indexes[-1] >= copied_total:
        raise PatchError(f"a changed byte at {int(indexes[-1])} lies past the {copied_total} copied bytes")
    if position + changes > len(raw):
        raise PatchError("covers data ends inside the changed bytes")
    values = np.frombuffer(raw, dtype=np.uint8, count=changes, offset=position) if changes else None
    position += changes
    extra = raw[position:]
    if len(extra) != length - copied_total:
        raise PatchError(f"covers data holds {len(extra)} new bytes where its covers take {length - copied_total}")
    copied = np.concatenate([source[start : start + size] for start, size, _ in pieces] or [source[:0]])
    if values is not None:
        copied = copied.copy()
        copied[indexes] += values  # uint8: wraps, as the differences were taken
    output = bytearray(length)
    done = taken = used = 0
    for _, size, added in pieces:
        output[done : done + size] = copied[taken : taken + size].tobytes()
        done, taken = done + size, taken + size
        output[done : done + added] = extra[used : used + added]
        done, used = done + added, used + added
    return bytes(output)
