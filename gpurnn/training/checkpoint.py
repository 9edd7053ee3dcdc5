"""Checkpoints: one ``.npz`` file, written atomically, read back without pickle.

Layout inside the zip: ``params/<name>`` arrays; ``optimizer/<path>`` and ``extra/<path>``
arrays taken out of those nested dicts; and ``__gpurnn__``, a uint8 array holding UTF-8 JSON
with the format name and version, step, vocab, config, rng_state and the two dicts with each
array replaced by ``{"__array__": "<key>"}``.

Saving writes a temporary file beside the target, fsyncs it and ``os.replace``-s it over the
target, so a crash leaves the old checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy

from ..engine.arrays.backend import is_device_array, to_host
from ..engine.models.parameters import elman_aliases

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CheckpointError", "NonFiniteError", "Checkpoint",
           "save_checkpoint", "load_checkpoint", "file_mode"]

FORMAT_NAME = "gpurnn-checkpoint"
# 2: every cell's parameters under PyTorch's names; version 1 files (the Elman weights as
# U, W, b) are read with their names moved (:func:`_from_version_1`).
# 3: level "char" is the raw text; the sentence-split character level of versions 1 and 2,
# then called "char", is read as "char-sentences" (:func:`_levels_before_3`).
FORMAT_VERSION = 3
_READS = (1, 2, 3)
_META_KEY = "__gpurnn__"
_VERSION_1_NAMES = elman_aliases(64)  # U -> weight_ih, …, U_l63 -> weight_ih_l63
_META_FIELDS = ("format", "version", "step", "vocab", "config", "rng_state", "params",
                "optimizer", "extra")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


class NonFiniteError(ValueError):
    """save_checkpoint was given NaN or Inf (a diverged run); nothing was written."""


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` returns; all arrays are NumPy arrays."""

    params: dict          # name -> array
    optimizer_state: dict  # as Optimizer.state_dict() gave it
    vocab: list           # Vocabulary.to_list()
    config: dict
    rng_state: dict | None
    step: int
    extra: dict | None
    version: int = FORMAT_VERSION  # the format the file was written in (it is read as this one)


def _is_array(value) -> bool:
    return isinstance(value, numpy.ndarray) or is_device_array(value)


def _split_arrays(tree, prefix: str, arrays: dict):
    """A JSON-able copy of ``tree`` with each array moved into ``arrays`` under a key."""
    if _is_array(tree):
        arrays[prefix] = to_host(tree)
        return {"__array__": prefix}
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            if not isinstance(key, str) or "/" in key or not key:
                raise ValueError(f"{prefix}: dict keys must be non-empty strings without '/', "
                                 f"got {key!r}")
            out[key] = _split_arrays(value, f"{prefix}/{key}", arrays)
        return out
    if isinstance(tree, (list, tuple)):
        return [_split_arrays(value, f"{prefix}/{i}", arrays) for i, value in enumerate(tree)]
    return tree


def _join_arrays(tree, arrays: dict):
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]  # KeyError: reported as a missing array
        return {key: _join_arrays(value, arrays) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_join_arrays(value, arrays) for value in tree]
    return tree


def _to_json(name: str, value) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be JSON-serialisable (dicts, lists, strings, finite "
                        f"numbers, bools, None; arrays only in optimizer_state and extra): "
                        f"{error}") from None


def save_checkpoint(path, *, params: dict, optimizer_state: dict, vocab, config: dict,
                    rng_state: dict | None, step: int, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically to ``path`` (the exact name; ``.npz`` is conventional).

    Args:
        params: name -> array (NumPy or CuPy), all finite.
        optimizer_state: ``Optimizer.state_dict()``; nested dicts of arrays and JSON scalars.
        vocab: a list of token strings, or an object with ``to_list()`` (a Vocabulary).
        config: JSON-able hyperparameters.
        rng_state: JSON-able RNG state (e.g. ``generator.bit_generator.state``) or None.
        step: training steps taken, >= 0.
        extra: optional nested dict of arrays and JSON scalars (e.g. batcher state, history).
    Raises:
        NonFiniteError (a ValueError): an array holds NaN or Inf. ValueError: a bad
            argument; TypeError: a field is not JSON-serialisable. Nothing is written then.
    """
    path = Path(path)
    if not isinstance(params, dict) or not params:
        raise ValueError("params must be a non-empty dict of name -> array")
    if isinstance(step, bool) or not isinstance(step, (int, numpy.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if hasattr(vocab, "to_list"):
        vocab = vocab.to_list()
    if not isinstance(vocab, (list, tuple)) or not all(isinstance(t, str) for t in vocab):
        raise TypeError("vocab must be a list of strings or have a to_list() method")
    arrays = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"params names must be non-empty strings without '/', got {name!r}")
        if not _is_array(value):
            raise TypeError(f"params[{name!r}] must be an array, got {type(value).__name__}")
        array = arrays[f"params/{name}"] = to_host(value)
        # Refused here so that a diverged run can never overwrite good parameters with NaN.
        if array.dtype.kind in "fc" and not numpy.isfinite(array).all():
            raise NonFiniteError(f"params[{name!r}] contains NaN or Inf; refusing to save {path}")
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "step": int(step),
            "vocab": list(vocab), "config": config, "rng_state": rng_state,
            "params": list(params),
            "optimizer": _split_arrays(optimizer_state, "optimizer", arrays),
            "extra": _split_arrays(extra, "extra", arrays)}
    for field in ("config", "rng_state", "optimizer", "extra"):
        _to_json(field, meta[field])
    arrays[_META_KEY] = numpy.frombuffer(_to_json("checkpoint", meta).encode("utf-8"),
                                         dtype=numpy.uint8)
    for key, array in arrays.items():  # what load_checkpoint would refuse is never written
        if key.startswith(("optimizer/", "extra/")) and array.dtype.kind in "fc" and \
                not numpy.isfinite(array).all():
            raise NonFiniteError(f"{key} contains NaN or Inf; refusing to save {path}")
    _write_atomically(path, arrays)
    return path


def _write_atomically(path: Path, arrays: dict) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot save checkpoint {path}: folder {folder} does not exist")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp makes the file 0600: give it the mode the file it replaces has (a user's
        # chmod survives every save), or for a new one what the umask allows, as open() would
        os.fchmod(descriptor, file_mode(path))
        with os.fdopen(descriptor, "wb") as file:
            numpy.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not possible on every OS / file system
        directory = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


def file_mode(path: Path) -> int:
    """The permission bits a file written to ``path`` gets: those of the file it replaces,
    else what the umask leaves of 0666, as ``open()`` would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


# What a checkpoint's arrays may hold beside its parameters, uncompressed: the optimizer's
# slots (two per parameter at most) and the extras (the carried state, a warm-up text, a
# batcher position) are a few times the parameters; a small file that would inflate to far
# more (a "zip bomb") is refused before anything is decompressed.
_OTHER_BYTES_PER_PARAM_BYTE = 8
_OTHER_BYTES_ALLOWED = 64 << 20
_META_BYTES_ALLOWED = 256 << 20  # the JSON metadata: a vocabulary of millions of words fits


def _check_members(path: Path) -> None:
    """The archive's members, by their declared sizes, before any is decompressed: only
    ``.npy`` arrays, the metadata and the non-parameter arrays within their caps."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint "
                              f"({type(error).__name__}: {error})") from None
    sizes, names = {}, set()
    for member in members:
        name = member.filename
        if not name.endswith(".npy") or name in names:
            raise CheckpointError(f"{path}: not a gpurnn checkpoint (archive member {name!r} "
                                  f"is {'repeated' if name in names else 'not an array'})")
        names.add(name)
        kind = "meta" if name == f"{_META_KEY}.npy" else \
            "params" if name.startswith("params/") else "other"
        sizes[kind] = sizes.get(kind, 0) + member.file_size
    allowed = _OTHER_BYTES_ALLOWED + _OTHER_BYTES_PER_PARAM_BYTE * sizes.get("params", 0)
    if sizes.get("meta", 0) > _META_BYTES_ALLOWED or sizes.get("other", 0) > allowed:
        what, size, cap = (("metadata", sizes["meta"], _META_BYTES_ALLOWED)
                           if sizes.get("meta", 0) > _META_BYTES_ALLOWED
                           else ("optimizer state and extras", sizes["other"], allowed))
        raise CheckpointError(f"{path}: its {what} would take {size:,} bytes uncompressed, "
                              f"more than a checkpoint of its {sizes.get('params', 0):,} bytes "
                              f"of parameters holds (at most {cap:,}); refusing to read it")


def _read_arrays(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if head != b"PK\x03\x04":  # every .npz is a zip archive
        raise CheckpointError(f"{path}: not a gpurnn checkpoint (not an .npz/zip file)")
    _check_members(path)
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as error:  # zipfile/numpy/OS errors from a damaged file, all alike to us
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint "
                              f"({type(error).__name__}: {error})") from None


def _check_values(path: Path, step, arrays: dict) -> None:
    """Refuse what save_checkpoint never writes, as a hand-edited or damaged file may hold:
    a step that is not a non-negative integer, parameters, optimizer state or carried
    state that are not floating point or not finite."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: step {step!r} is out of range (expected an integer "
                              f">= 0)")
    for key, array in arrays.items():
        kind, _, name = key.partition("/")
        what = {"params": "parameter", "optimizer": "optimizer state"}.get(kind, "array")
        if key.startswith(("params/", "optimizer/")) and array.dtype.kind != "f":
            raise CheckpointError(f"{path}: {what} {name!r} has dtype {array.dtype}; "
                                  f"expected float32 or float64")
        if array.dtype.kind in "fc" and not numpy.isfinite(array).all():
            raise CheckpointError(f"{path}: {what} {name!r} holds NaN or Inf")


def _from_version_1(params: dict, optimizer_state):
    """Version 1's Elman names (U, W, b, U_l1, …) moved to PyTorch's, in the parameters and
    in the optimizer's per-parameter slots; no other model of version 1 used those names."""
    def renamed(arrays: dict) -> dict:
        return {_VERSION_1_NAMES.get(name, name): value for name, value in arrays.items()}
    if isinstance(optimizer_state, dict) and isinstance(optimizer_state.get("slots"), dict):
        optimizer_state = {**optimizer_state, "slots": {
            slot: renamed(arrays) if isinstance(arrays, dict) else arrays
            for slot, arrays in optimizer_state["slots"].items()}}
    return renamed(params), optimizer_state


# What save_checkpoint writes in each metadata field; a damaged or hand-made file is refused
# naming the field, before any code trips over a list where it expects a dict.
_META_TYPES = {"vocab": (list,), "config": (dict,), "rng_state": (dict, type(None)),
               "params": (list,), "optimizer": (dict,), "extra": (dict, type(None))}


def _check_meta_types(path: Path, meta: dict) -> None:
    for field, types in _META_TYPES.items():
        if not isinstance(meta[field], types):
            expected = " or ".join("null" if t is type(None) else {"list": "a list", "dict":
                                   "an object"}[t.__name__] for t in types)
            raise CheckpointError(f"{path}: checkpoint metadata field {field!r} is "
                                  f"{type(meta[field]).__name__}, expected {expected}")
    for field in ("vocab", "params"):
        if not all(isinstance(item, str) for item in meta[field]):
            raise CheckpointError(f"{path}: checkpoint metadata field {field!r} must list "
                                  f"strings only")
    if len(set(meta["params"])) != len(meta["params"]):
        raise CheckpointError(f"{path}: checkpoint metadata names a parameter twice")


def _levels_before_3(config):
    """Versions 1-2 named the sentence-split character level "char"; it is "char-sentences"
    now, and "char" the raw text. The level is in the trainer's ``train`` table, or at the
    top where gpurnn.save wrote it."""
    if not isinstance(config, dict):
        return config
    config = dict(config)
    if config.get("level") == "char":
        config["level"] = "char-sentences"
    train = config.get("train")
    if isinstance(train, dict) and train.get("level") == "char":
        config["train"] = {**train, "level": "char-sentences"}
    return config


def load_checkpoint(path) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing, empty, truncated or corrupt file, not a gpurnn checkpoint,
            another format version, missing fields/arrays, a step out of range, or arrays
            that are not finite floating point; the message names the file.
    """
    path = Path(path)
    arrays = _read_arrays(path)
    raw = arrays.pop(_META_KEY, None)
    if not isinstance(raw, numpy.ndarray) or raw.dtype != numpy.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: not a gpurnn checkpoint (no {_META_KEY} metadata)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({error})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (nested too deeply)") \
            from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a gpurnn checkpoint (metadata format is "
                              f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("version") not in _READS:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r}; "
                              f"this gpurnn reads versions {', '.join(map(str, _READS))}")
    missing = [field for field in _META_FIELDS if field not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {', '.join(missing)}")
    _check_meta_types(path, meta)
    try:
        params = {name: arrays[f"params/{name}"] for name in meta["params"]}
        optimizer_state = _join_arrays(meta["optimizer"], arrays)
        extra = _join_arrays(meta["extra"], arrays)
    except KeyError as error:
        raise CheckpointError(f"{path}: checkpoint lacks the array {error.args[0]!r}") from None
    _check_values(path, meta["step"], arrays)
    if meta["version"] == 1:
        params, optimizer_state = _from_version_1(params, optimizer_state)
    config = meta["config"] if meta["version"] >= 3 else _levels_before_3(meta["config"])
    return Checkpoint(params=params, optimizer_state=optimizer_state, vocab=meta["vocab"],
                      config=config, rng_state=meta["rng_state"], step=meta["step"],
                      extra=extra, version=meta["version"])
