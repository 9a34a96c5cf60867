"""``torch.save``'s checkpoint layout written without torch: a zip of stored entries, ``<stem>/data.pkl`` naming
each tensor's storage class (``torch.FloatStorage``, …) and ``<stem>/data/<key>`` with its raw bytes.

The bench corpus (``bench/corpus.py``) and the engine's zip tests use it; it lives in ``bench/`` because the
tests may import from here, never the other way round.
"""

from __future__ import annotations

import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np

Tensors = dict[str, np.ndarray]


ENTRY_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can say (torch.save writes its own fixed one)


def _torch_storages() -> types.ModuleType:
    """A stand-in ``torch`` with the storage classes pickles refer to (``GLOBAL 'torch FloatStorage'``)."""
    module = types.ModuleType("torch")
    for name in ("FloatStorage", "HalfStorage", "CharStorage", "IntStorage"):
        setattr(module, name, type(name, (), {"__module__": "torch"}))
    return module


def write_torch_checkpoint(path: Path, tensors: Tensors) -> None:
    """``torch.save``'s zip layout without torch: ``<stem>/data.pkl`` (persistent ids ``('storage',
    torch.FloatStorage, key, 'cpu', numel)``) and one stored ``<stem>/data/<key>`` per tensor."""
    torch = _torch_storages()
    storage = {
        np.dtype(np.float32): torch.FloatStorage,
        np.dtype(np.float16): torch.HalfStorage,
        np.dtype(np.int8): torch.CharStorage,
        np.dtype(np.int32): torch.IntStorage,
    }
    keys = {name: str(index) for index, name in enumerate(tensors)}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            if isinstance(obj, tuple) and obj and obj[0] == "tensor":
                array = tensors[obj[1]]
                return ("storage", storage[array.dtype], keys[obj[1]], "cpu", array.size)
            return None

    real = sys.modules.get("torch")
    sys.modules["torch"] = torch  # pickle checks that the classes it names can be found there
    try:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            with archive.open(_entry(f"{path.stem}/data.pkl"), "w") as handle:
                Pickler(handle, protocol=2).dump({name: ("tensor", name) for name in tensors})
            for name, array in tensors.items():
                archive.writestr(_entry(f"{path.stem}/data/{keys[name]}"), np.ascontiguousarray(array).tobytes())
            archive.writestr(_entry(f"{path.stem}/version"), "3\n")
    finally:
        if real is None:
            del sys.modules["torch"]
        else:
            sys.modules["torch"] = real


def _entry(name: str) -> zipfile.ZipInfo:
    """A stored entry with a fixed time stamp, so the same tensors always make the same bytes."""
    return zipfile.ZipInfo(name, date_time=ENTRY_TIME)
