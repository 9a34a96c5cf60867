"""Tensors inside zip archives: PyTorch ``.pt``/``.pth`` (TorchScript and ``torch.save``), NumPy ``.npz``,
Keras ``.keras`` — create side only, like :mod:`repo.engine.formats`.

    file (mmap) → central directory read with :mod:`zipfile` over the buffer (nothing copied)
      → every *stored* (uncompressed) entry becomes a region: its data starts after the entry's local header;
        compressed entries stay generic bytes (their bytes change wholesale anyway)
      → dtype per entry: ``.npy`` members from their header (the array after it); PyTorch ``…/data/<key>``
        from the storage classes in ``…/data.pkl`` (``torch.FloatStorage``, ``HalfStorage``,
        ``BFloat16Storage``…), read with :mod:`pickletools` — opcodes only, nothing is unpickled
      → anything else stored is ``unknown``: width 1, and the candidates try widths 1, 2 and 4

Names drop the archive's top folder (``torch.save`` names it after the file), so ``old/data/3`` and
``new/data/3`` align by name.
"""

from __future__ import annotations

import ast
import io
import pickletools
import struct
import zipfile
import zlib

import numpy as np

from lorien.repo.engine.regions import Buffer, TensorRegion, region
from lorien.repo.engine.sparse_diff import CRC_FIELD_SPACING

LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (fixed fields), name length, extra length
TORCH_DTYPES = {
    "Float": "float32",
    "Half": "float16",
    "BFloat16": "bfloat16",
    "Double": "float64",
    "Long": "int64",
    "Int": "int32",
    "Short": "int16",
    "Char": "int8",
    "Byte": "uint8",
    "Bool": "bool",
}
MAX_PICKLE = 64 << 20  # a data.pkl larger than this is not scanned for dtypes


class _View(io.RawIOBase):
    """A seekable read-only file over a buffer, for :class:`zipfile.ZipFile` (``io.BytesIO`` would copy it)."""

    def __init__(self, data: Buffer) -> None:
        self._data, self._position = memoryview(data), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        chunk = self._data[self._position : self._position + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._data)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position


def _opened(data: Buffer) -> zipfile.ZipFile | None:
    """``data`` as a zip archive read in place, or None when it is not one :mod:`zipfile` can read."""
    if bytes(data[:4]) != b"PK\x03\x04":
        return None
    try:
        return zipfile.ZipFile(_View(data))
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, UnicodeDecodeError, ValueError):
        return None


def _data_start(data: Buffer, info: zipfile.ZipInfo) -> int | None:
    """Where a stored entry's data starts (after its local header), or None when its header is not there or
    its data runs past the end."""
    if not 0 <= info.header_offset <= len(data) - LOCAL_HEADER.size:
        return None
    signature, name_length, extra_length = LOCAL_HEADER.unpack_from(data, info.header_offset)
    start = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
    if signature != b"PK\x03\x04" or start + info.file_size > len(data):
        return None
    return start


def read_zip(data: Buffer) -> list[TensorRegion] | None:
    archive = _opened(data)
    if archive is None:
        return None
    with archive:
        torch_dtypes = _torch_dtypes(archive)
        regions = [_entry(data, info, archive, torch_dtypes) for info in archive.infolist()]
    return [r for r in regions if r is not None]


def _entry(
    data: Buffer, info: zipfile.ZipInfo, archive: zipfile.ZipFile, torch_dtypes: dict[str, str]
) -> TensorRegion | None:
    if info.compress_type != zipfile.ZIP_STORED or info.is_dir() or not info.file_size:
        return None
    start = _data_start(data, info)
    if start is None:
        return None
    name = info.filename.split("/", 1)[-1]
    if info.filename.endswith(".npy"):
        return _npy(data, name, start, info.file_size)
    parts = info.filename.rsplit("/", 2)
    if len(parts) == 3 and parts[1] == "data" and parts[2] in torch_dtypes:
        return region(name, start, info.file_size, torch_dtypes[parts[2]], ())
    return region(name, start, info.file_size, "unknown", ())


def _npy(data: Buffer, name: str, start: int, size: int) -> TensorRegion | None:
    """The array of a ``.npy`` member: after its magic, version and header dictionary."""
    head = bytes(data[start : start + 10])
    if len(head) < 10 or head[:6] != b"\x93NUMPY":
        return None
    major = head[6]
    length_format, fixed = ("<H", 10) if major == 1 else ("<I", 12)
    (header_length,) = struct.unpack_from(length_format, bytes(data[start + 8 : start + 12]))
    try:
        header = ast.literal_eval(bytes(data[start + fixed : start + fixed + header_length]).decode("latin-1"))
        dtype = np.dtype(header["descr"])
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        return None
    offset = start + fixed + header_length
    if dtype.byteorder == ">" or offset > start + size:
        return None
    return region(name, offset, start + size - offset, dtype.name, tuple(header.get("shape", ())))


def _torch_dtypes(archive: zipfile.ZipFile) -> dict[str, str]:
    """Storage key → dtype from the archive's ``data.pkl`` persistent ids ``('storage', <class>, key, …)``."""
    pickles = [i for i in archive.infolist() if i.filename.endswith("data.pkl") and i.file_size <= MAX_PICKLE]
    found: dict[str, str] = {}
    for info in pickles:
        try:
            found.update(_storages(archive.read(info)))
        except (ValueError, zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError):
            continue  # not a pickle we understand: its tensors stay "unknown"
    return found


def _storages(pickle: bytes) -> dict[str, str]:
    memo: dict[int, object] = {}
    recent: list[object] = []  # strings and class names pushed, in order (other values are skipped)
    found: dict[str, str] = {}
    for opcode, argument, _ in pickletools.genops(pickle):
        value: object = None
        if opcode.name in ("BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINUNICODE8"):
            value = argument
        elif opcode.name == "GLOBAL":
            value = ("class", str(argument).replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL" and len(recent) >= 2:
            value = ("class", f"{recent[-2]}.{recent[-1]}")
        elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
            value = memo.get(int(argument))
        elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[len(memo) if opcode.name == "MEMOIZE" else int(argument)] = recent[-1] if recent else None
            continue
        elif opcode.name == "BINPERSID":
            _persistent_storage(recent, found)
        recent.append(value)
        del recent[:-8]
    return found


def _persistent_storage(recent: list[object], found: dict[str, str]) -> None:
    """``'storage', ('class', 'torch.XStorage'), key, location`` just before a persistent id."""
    for index in range(len(recent) - 3, -1, -1):
        if recent[index] == "storage":
            kind, key = recent[index + 1], recent[index + 2]
            if isinstance(kind, tuple) and isinstance(key, str) and kind[1].startswith("torch."):
                dtype = TORCH_DTYPES.get(kind[1][len("torch.") :].removesuffix("Storage"))
                if dtype:
                    found[key] = dtype
            return


CENTRAL_RECORD = struct.Struct("<4s12xI8xHHH8xI")  # signature, CRC-32, name/extra/comment lengths, header offset


def crc_fields(data: Buffer) -> list[tuple[int, int, int]]:
    """Where a zip's checksums of its stored entries sit: (field offset, data start, data length) for each
    stored entry's CRC-32 in its local header and again in the central directory — each checked to be the
    CRC-32 of those data bytes (what codec 12 recomputes on apply instead of carrying the changed values);
    sorted, at least ``CRC_FIELD_SPACING`` bytes apart. An archive it cannot read gives none."""
    archive = _opened(data)
    if archive is None:
        return []
    with archive:
        infos, directory = archive.infolist(), archive.start_dir
    checked: dict[int, tuple[int, int, int]] = {}  # local header offset → data start, length, CRC-32
    fields = []
    for info in infos:
        header = info.header_offset
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size or header in checked:
            continue
        start = _data_start(data, info)
        if start is None:
            continue
        crc = zlib.crc32(data[start : start + info.file_size])
        if crc != info.CRC:
            continue
        checked[header] = (start, info.file_size, crc)
        if struct.unpack_from("<I", data, header + 14)[0] == crc:
            fields.append((header + 14, start, info.file_size))
    position = directory
    while 0 <= position <= len(data) - CENTRAL_RECORD.size:
        signature, crc, name_length, extra_length, comment_length, header = CENTRAL_RECORD.unpack_from(
            data, position
        )
        if signature != b"PK\x01\x02":
            break
        if header in checked and checked[header][2] == crc:
            fields.append((position + 16, *checked[header][:2]))
        position += CENTRAL_RECORD.size + name_length + extra_length + comment_length
    spaced: list[tuple[int, int, int]] = []
    for field in sorted(fields):
        if not spaced or field[0] >= spaced[-1][0] + CRC_FIELD_SPACING:
            spaced.append(field)
    return spaced
