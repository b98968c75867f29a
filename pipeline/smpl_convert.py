"""SMPL without chumpy: read the official SMPL pickles into plain numpy arrays and write a pickle-free ``.npz``.

The official ``basicmodel_*_lbs_10_207_0_v1.*.pkl`` files are Python-2 pickles holding chumpy ``Ch`` objects
(chumpy does not install on numpy >= 1.24 / Python >= 3.11) and a scipy sparse ``J_regressor``. We read them with
:class:`pipeline.unpickle.RestrictedUnpickler`: every ``chumpy.*`` class becomes a stub whose pickled state
(``__dict__`` minus caches; the array lives in ``state['x']``) is turned into ``np.asarray(state['x'])``, and the
scipy sparse classes become stubs rebuilt from their ``data/indices/indptr`` arrays. Neither chumpy nor any
code named by the pickle is imported or run.

The ``.npz`` holds exactly what ``smplx.SMPL`` reads from its data struct: ``v_template`` (V,3), ``shapedirs``
(V,3,B), ``posedirs`` (V,3,207), ``J_regressor`` (24,V) dense, ``weights`` (V,24), ``kintree_table`` (2,24),
``f`` (F,3). Note: smplx 0.1.28's ``SMPL`` class ignores ``ext`` and always ``pickle.load``s its file, so load the
npz with :func:`pipeline.body_model.smpl_layer` (which hands smplx the arrays directly), or with
``smplx.SMPL(model_path=..., data_struct=smplx.utils.Struct(**np.load(path)))``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import click
import numpy as np

from .errors import InputError
from .fsutil import atomic_path
from .unpickle import RestrictedUnpickler, StateStub, UnsafePickleError

log = logging.getLogger(__name__)

__all__ = ["SMPL_KEYS", "read_smpl_model", "read_smpl_pickle", "write_smpl_npz", "smpl_convert_cmd"]

SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
_SPARSE_FORMATS = ("csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array")


def _stub_class(module: str, name: str) -> type:
    return type(f"Stub_{name}", (StateStub,), {"stub_module": module, "stub_name": name, "state": None, "args": ()})


def _sparse_to_dense(stub: StateStub) -> np.ndarray:
    import scipy.sparse as sp
    st = stub.state if isinstance(stub.state, dict) else {}
    shape = tuple(st.get("_shape") or st.get("shape") or ())
    fmt = stub.stub_name.split("_")[0]
    if fmt in ("csc", "csr") and {"data", "indices", "indptr"} <= st.keys():
        cls = sp.csc_matrix if fmt == "csc" else sp.csr_matrix
        m = cls((np.asarray(st["data"]), np.asarray(st["indices"]), np.asarray(st["indptr"])), shape=shape)
    elif fmt == "coo" and {"data", "row", "col"} <= st.keys():
        m = sp.coo_matrix((np.asarray(st["data"]), (np.asarray(st["row"]), np.asarray(st["col"]))), shape=shape)
    elif fmt == "coo" and {"data", "coords"} <= st.keys():
        m = sp.coo_matrix((np.asarray(st["data"]), tuple(np.asarray(c) for c in st["coords"])), shape=shape)
    else:
        raise ValueError(f"cannot rebuild scipy sparse {stub.stub_name} from state keys {sorted(st)}")
    return np.asarray(m.toarray())


def _plain(obj, where: str):
    """Replace stubs by numpy arrays, recursively through dicts/lists/tuples."""
    if isinstance(obj, StateStub):
        if obj.stub_module.startswith("scipy"):
            return _sparse_to_dense(obj)
        st = obj.state
        if isinstance(st, dict) and "x" in st:
            return np.asarray(_plain(st["x"], where))
        raise ValueError(f"{where}: chumpy object {obj.stub_module}.{obj.stub_name} has no stored value 'x' "
                         "(a derived expression); convert the file with smplx's tools/clean_ch.py instead")
    if isinstance(obj, dict):
        return {k: _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, where) for v in obj)
    return obj


def _sparse_stub_factory(module: str, name: str) -> type:
    if name not in _SPARSE_FORMATS:
        raise UnsafePickleError(f"refusing to load global {module}.{name} (only sparse matrices are allowed)")
    return _stub_class(module, name)


def read_smpl_pickle(path) -> dict:
    """Official SMPL pickle -> dict of plain numpy arrays (all keys of the file, stubs converted)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f, source=str(path),
                                       stubs={"chumpy": _stub_class, "scipy.sparse": _sparse_stub_factory}).load()
    except UnsafePickleError as e:
        raise InputError(str(e)) from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise InputError(f"{path}: not a readable SMPL pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict of model arrays, got {type(data).__name__}")
    try:
        return _plain(data, str(path))
    except ValueError as e:
        raise InputError(str(e)) from None


def _check_model(model: dict, path) -> dict:
    missing = [k for k in SMPL_KEYS if k not in model]
    if missing:
        raise InputError(f"{path}: not an SMPL model, missing {', '.join(missing)}")
    out = {k: np.asarray(model[k]) for k in SMPL_KEYS}
    V = out["v_template"].shape[0]
    shapes = {"v_template": (V, 3), "J_regressor": (24, V), "weights": (V, 24), "kintree_table": (2, 24)}
    for k, shp in shapes.items():
        if out[k].shape != shp:
            raise InputError(f"{path}: {k} has shape {out[k].shape}, expected {shp}")
    if out["shapedirs"].ndim != 3 or out["shapedirs"].shape[:2] != (V, 3):
        raise InputError(f"{path}: shapedirs has shape {out['shapedirs'].shape}, expected ({V}, 3, B)")
    if out["posedirs"].shape != (V, 3, 207):
        raise InputError(f"{path}: posedirs has shape {out['posedirs'].shape}, expected ({V}, 3, 207)")
    out["kintree_table"] = out["kintree_table"].astype(np.int64)
    out["f"] = out["f"].astype(np.int64)
    for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        out[k] = out[k].astype(np.float64)
    return out


def read_smpl_model(path) -> dict:
    """An SMPL model file (.pkl official, or .npz written by :func:`write_smpl_npz`) -> the arrays of SMPL_KEYS."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: SMPL model file not found")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                model = {k: z[k] for k in z.files if k in SMPL_KEYS}
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable npz ({e})") from None
    else:
        model = read_smpl_pickle(path)
    return _check_model(model, path)


def write_smpl_npz(model: dict, out) -> None:
    out = Path(out)
    with atomic_path(out, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: model[k] for k in SMPL_KEYS})


@click.command("smpl-convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output .npz (e.g. SMPL_NEUTRAL.npz).")
def smpl_convert_cmd(src: Path, out: Path):
    """Convert an official SMPL .pkl (chumpy) into a plain .npz, without chumpy and without running pickle code."""
    if out.suffix != ".npz":
        raise InputError(f"{out}: --out must end in .npz")
    model = read_smpl_model(src)
    write_smpl_npz(model, out)
    click.echo(f"wrote {out}: {model['v_template'].shape[0]} vertices, {model['shapedirs'].shape[2]} shape "
               f"components, {model['f'].shape[0]} faces")
