"""Restricted unpickling for the untrusted pickles this toolkit must read (3DPW sequence files, SMPL models).

A pickle can name any importable callable and call it while loading (``os.system`` via ``__reduce__``). The
:class:`RestrictedUnpickler` resolves only an explicit allow-list of globals -- numpy array/dtype/scalar
reconstruction plus a few harmless builtins -- and refuses everything else with :class:`UnsafePickleError`
*before* anything is called. Callers may add *stub* classes for foreign types they want to read as plain data
(chumpy ``Ch`` objects, scipy sparse matrices: see :mod:`pipeline.smpl_convert`); a stub never runs the foreign
code, it only records the pickled state.

Python-2 pickles (3DPW, SMPL) need ``encoding='latin1'`` so that numpy's raw buffers survive; that is the default.
"""
from __future__ import annotations

import _codecs
import _compat_pickle
import copyreg
import io
import logging
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "restricted_load", "restricted_loads", "StateStub"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing from it was called."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 moved numpy.core to numpy._core; old pickles still say numpy.core
        from numpy._core import multiarray as ma, numeric as nu
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core import multiarray as ma, numeric as nu
    out = {}
    for pkg in ("numpy.core", "numpy._core"):
        out[(f"{pkg}.multiarray", "_reconstruct")] = ma._reconstruct
        out[(f"{pkg}.multiarray", "scalar")] = ma.scalar
        out[(f"{pkg}.numeric", "_frombuffer")] = nu._frombuffer  # protocol 5 out-of-band-capable arrays
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float64DType etc.; only the dtype classes, nothing callable else
    try:
        import numpy.dtypes as npd
        for name in dir(npd):
            obj = getattr(npd, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                out[("numpy.dtypes", name)] = obj
    except ImportError:  # pragma: no cover
        pass
    return out


# Harmless builtins a protocol-2 pickle uses for plain containers: ``_codecs.encode`` turns the latin-1 str of a
# bytes object back into bytes (how Python 3 writes bytes at protocol 2); ``copyreg._reconstructor`` rebuilds
# new-style objects whose class was itself resolved through this allow-list.
_BUILTINS: dict[tuple[str, str], Any] = {
    ("builtins", "object"): object, ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex, ("builtins", "bytearray"): bytearray, ("builtins", "slice"): slice,
    ("builtins", "list"): list, ("builtins", "dict"): dict, ("builtins", "tuple"): tuple,
    ("_codecs", "encode"): _codecs.encode, ("copyreg", "_reconstructor"): copyreg._reconstructor,
}


class StateStub:
    """Stand-in for a foreign class: ``__new__`` takes no action, ``__setstate__`` stores the state for later
    conversion into plain data. ``stub_module`` / ``stub_name`` record what the pickle asked for."""
    stub_module = ""
    stub_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<stub {self.stub_module}.{self.stub_name}>"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves allow-listed globals.

    ``stubs`` maps a module prefix (e.g. ``"chumpy"``) to a factory ``(module, name) -> class``; globals from
    such modules resolve to the returned (harmless) class instead of the real one.
    """

    def __init__(self, file, *, stubs: Mapping[str, Callable[[str, str], type]] | None = None,
                 encoding: str = "latin1", source: str = "<pickle>"):
        super().__init__(file, encoding=encoding, fix_imports=True)
        self._allowed = {**_numpy_globals(), **_BUILTINS}
        self._stubs = dict(stubs or {})
        self._source = source

    def find_class(self, module: str, name: str):
        # Python-2 names (__builtin__, copy_reg) -> Python 3, as pickle's own find_class does with fix_imports
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in self._allowed:
            return self._allowed[key]
        for prefix, factory in self._stubs.items():
            if module == prefix or module.startswith(prefix + "."):
                return factory(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to load global {module}.{name} (not on the allow-list of plain numpy "
            "data; the file may be malicious or of an unexpected kind)")


def restricted_loads(data: bytes, **kwargs) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


def restricted_load(path, **kwargs) -> Any:
    """Load a pickle file with :class:`RestrictedUnpickler` (latin-1 by default)."""
    path = Path(path)
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, source=str(path), **kwargs).load()
