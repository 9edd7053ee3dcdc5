"""``cpu-strict``: NumPy underneath, CuPy's rules on top, and a guard on hidden transfers.

A CuPy array lives in GPU memory, so CuPy refuses what would silently copy it to the host
or mix host arrays into device work. NumPy refuses none of it, so code tested only on
NumPy can break on its first GPU run. A :class:`StrictArray` is a thin wrapper around a
NumPy array that refuses the same things, copied from CuPy's source (``core.pyx``,
``_kernel.pyx``, ``_routines_indexing.pyx``, ``_scalar.pyx``):

* ``numpy.asarray(a)``, ``numpy.array(a)`` and any other implicit conversion to NumPy
  raise ``TypeError`` ("Implicit conversion to a NumPy array is not allowed"); explicit
  transfers are :func:`gpurnn.engine.arrays.backend.to_host` or ``a.get()``.
* A NumPy array (of any shape) as an operand or ``out`` of a ufunc or of an array-module
  function raises ``TypeError``; NumPy and Python scalars are fine.
* ``a[...] = host_array`` raises ``ValueError`` as CuPy does (assignment through an index
  array converts the values silently instead: an implicit transfer, see below).
* Ufunc calls take only ``out``, ``dtype`` and ``casting``; ``reduce`` and ``accumulate``
  exist for add and multiply only, ``reduceat`` for add only, ``at`` for add, subtract,
  maximum, minimum and the bitwise ops; ``take`` has ``out`` but no ``mode``.
* Results are device arrays: a reduction to one value is a 0-d array, never a NumPy scalar.

CuPy also lets through operations that each cost a device synchronisation or a silent
host-to-device copy: ``float()``, ``int()``, ``bool()``, ``.item()``, ``.tolist()``,
``str()`` and f-string formatting of a device array, an index array (or list) from the
host, a boolean-mask index and the ``nonzero`` family (the result's size must be read
back). They are correct but, inside a time loop, slow. :func:`transfer_guard` handles
them as JAX's ``jax.transfer_guard`` does: ``"allow"`` (the default), ``"log"``
(recorded in the guard and logged) or ``"disallow"`` (raise :class:`TransferGuardError`).
Explicit transfers (``to_host``, ``to_device``, ``xp.asarray(host_array)``, ``.get()``)
are always allowed; a guard counts them separately. The default level can be set with the
environment variable ``GPURNN_TRANSFER_GUARD``.

What this cannot show: anything about kernels (launch configuration, races, occupancy),
speed, or CuPy lacking a function or keyword that NumPy has; for the last, every
array-module call made here is recorded (:func:`api_usage`) and checked against the
installed CuPy by the test suite.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import types

import numpy

__all__ = ["StrictArray", "xp", "from_host", "kernel_buffer", "TransferGuardError", "transfer_guard",
           "TRANSFER_GUARD_LEVELS", "api_usage"]

TRANSFER_GUARD_LEVELS = ("allow", "log", "disallow")
_logger = logging.getLogger("gpurnn.strict")

# --- CuPy's rules, as tables ------------------------------------------------------------
_UFUNC_KEYWORDS = frozenset({"out", "dtype", "casting"})      # ufunc.__call__ (_kernel.pyx)
_UFUNC_METHODS = {                                            # method -> (ufuncs, keywords)
    "reduce": (("add", "multiply"), ("axis", "dtype", "out", "keepdims")),
    "accumulate": (("add", "multiply"), ("axis", "dtype", "out")),
    "reduceat": (("add",), ("axis", "dtype", "out")),
    "at": (("add", "subtract", "maximum", "minimum", "bitwise_and", "bitwise_or",
            "bitwise_xor"), ()),
    "outer": (None, ("out", "dtype", "casting")),
}
# Functions whose CuPy signature lacks keywords NumPy's has (others: the contract test).
_FUNCTION_KEYWORDS = {"take": ("axis", "out")}
# Functions that take host data: the explicit host-to-device transfers.
_FROM_HOST = frozenset({"array", "asarray", "asanyarray", "frombuffer", "fromiter",
                        "fromfunction", "fromstring", "loadtxt", "genfromtxt"})
# Functions whose result size depends on the data: CuPy reads a count back (a sync).
_SYNCING = frozenset({"nonzero", "flatnonzero", "argwhere", "unique", "extract", "compress"})


class TransferGuardError(RuntimeError):
    """An implicit transfer or synchronisation under ``transfer_guard("disallow")``."""


# --- the guard ----------------------------------------------------------------------------
class TransferGuard:
    """What :func:`transfer_guard` yields: its ``level`` and the ``events`` (implicit
    transfers and synchronisations, one line each) and ``explicit`` transfers seen."""

    def __init__(self, level: str):
        if level not in TRANSFER_GUARD_LEVELS:
            raise ValueError(f"unknown transfer guard level {level!r}; expected one of "
                             f"{', '.join(TRANSFER_GUARD_LEVELS)}")
        self.level = level
        self.events: list[str] = []
        self.explicit: list[str] = []


_local = threading.local()


def _guards() -> list:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = [TransferGuard(os.environ.get("GPURNN_TRANSFER_GUARD", "allow")
                                              .strip().lower() or "allow")]
    return stack


@contextlib.contextmanager
def transfer_guard(level: str = "disallow"):
    """Within the block, implicit transfers on strict arrays are allowed, logged or refused.

    Yields a :class:`TransferGuard` whose ``events`` list what happened (at ``"log"``;
    at ``"disallow"`` the first one raises). The innermost guard decides.
    """
    guard = TransferGuard(level)
    stack = _guards()
    stack.append(guard)
    try:
        yield guard
    finally:
        stack.remove(guard)


_SHIM_FILES = (__file__, os.path.join(os.path.dirname(__file__), "backend.py"))


def _caller() -> str:
    """file:line of the first frame outside this module and the backend shim (where the
    user's code did it)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in _SHIM_FILES:
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _implicit(what: str) -> None:
    """An implicit transfer or synchronisation happened: allow, log or refuse it."""
    guard = _guards()[-1]
    if guard.level == "allow":
        return
    event = f"{what} at {_caller()}"
    if guard.level == "disallow":
        raise TransferGuardError(f"implicit transfer refused by transfer_guard: {event}")
    guard.events.append(event)
    _logger.warning("implicit transfer: %s", event)


def _explicit(what: str) -> None:
    guard = _guards()[-1]
    if guard.level != "allow":
        guard.explicit.append(f"{what} at {_caller()}")


# --- which array-module API is used ---------------------------------------------------------
_usage: dict = {}


def _record(kind: str, name: str, positional: int, keywords) -> None:
    _usage[(kind, name, positional, tuple(sorted(keywords)) if keywords else ())] = None


def api_usage() -> list:
    """Every call made on strict arrays so far, as (kind, name, positional count,
    keyword names): kind is "function" (``xp.name``, ``xp.linalg.name``), "ufunc"
    (``name`` or ``name.method``), "method" or "attribute" (of the array)."""
    return sorted(_usage)


# --- wrapping and unwrapping ------------------------------------------------------------------
def _host_array_error(where: str) -> TypeError:
    return TypeError(f"{where}: a NumPy array cannot be mixed with device arrays (CuPy "
                     f"raises TypeError: Unsupported type <class 'numpy.ndarray'>); move it "
                     f"with to_device() or xp.asarray() first")


def _unwrap(value, where: str, host_ok: bool = False):
    """The NumPy array inside a strict one; lists and tuples are unwrapped item by item;
    a NumPy array is refused unless ``host_ok`` (then it is copied: a transfer)."""
    kind = type(value)
    if kind is StrictArray:
        return value._a
    if kind in _PLAIN:
        return value
    if kind is numpy.ndarray:
        if not host_ok:
            raise _host_array_error(where)
        _explicit(f"{where}(host array)")
        return value.copy()
    if kind is list or kind is tuple:
        return kind([_unwrap(item, where, host_ok) for item in value])
    return value


# Types that pass through unwrapping and indexing untouched (the common cases first).
_PLAIN = frozenset({int, float, slice, type(None), type(Ellipsis), bool, str, complex})


def _wrap(value):
    kind = type(value)
    if kind is numpy.ndarray:
        return StrictArray(value)
    if isinstance(value, numpy.generic):
        return StrictArray(numpy.asarray(value))
    if kind is tuple or kind is list:
        return kind(_wrap(item) for item in value)
    return value


def _wrap_out(result, out):
    """``result`` wrapped, as the very ``out`` object when the result was written there."""
    if out is not None:
        outs = out if type(out) is tuple else (out,)
        for given in outs:
            if type(given) is StrictArray and result is given._a:
                return given
        if type(result) is tuple and len(result) == len(outs):
            return tuple(_wrap_out(r, o) for r, o in zip(result, outs))
    return _wrap(result)


def _check_out(out, where):
    for given in (out if type(out) is tuple else (out,)):
        if given is not None and type(given) is not StrictArray:
            raise TypeError(f"{where}: out must be a device array (CuPy: 'Output arguments "
                            f"type must be cupy.ndarray'), got {type(given).__name__}")


def _index(key, where: str):
    """A NumPy index from ``key``: host index arrays and lists are silent host-to-device
    copies on CuPy, boolean masks a synchronisation (the result's size)."""
    kind = type(key)
    if kind in _PLAIN:
        return key
    if kind is tuple:
        for item in key:
            if type(item) not in _PLAIN:
                return tuple(_index(item, where) for item in key)
        return key
    if kind is StrictArray:
        if key._a.dtype == bool and key._a.ndim > 0:
            _implicit(f"{where} with a boolean mask (a synchronisation: the result's size)")
        return key._a
    if kind is numpy.ndarray or kind is list:
        what = "list" if kind is list else "NumPy array"
        _implicit(f"{where} with a {what} as index, from the host (a silent copy to the "
                  f"device)")
        return numpy.asarray(key)
    return key


# --- ufuncs -------------------------------------------------------------------------------------
_SCALARS = (int, float, complex, bool, numpy.generic)


def _operand_error(where, value):
    if type(value) is numpy.ndarray:
        return _host_array_error(where)
    return TypeError(f"{where}: unsupported operand type {type(value).__name__} (CuPy takes "
                     f"device arrays and scalars)")


def _call_ufunc(ufunc, inputs, kwargs):
    """``ufunc(*inputs, **kwargs)``: the hot path of every operator, kept short."""
    args = []
    for value in inputs:
        kind = type(value)
        if kind is StrictArray:
            args.append(value._a)
        elif kind is float or kind is int or isinstance(value, _SCALARS):
            args.append(value)
        else:
            raise _operand_error(ufunc.__name__, value)
    if not kwargs:
        _record("ufunc", ufunc.__name__, len(args), ())
        result = ufunc(*args)
        return StrictArray(result) if type(result) is numpy.ndarray else _wrap(result)
    if len(kwargs) == 1 and ufunc.nout == 1:                 # out= alone: the next hottest
        out = kwargs.get("out")
        if type(out) is tuple and len(out) == 1:
            out = out[0]
        if type(out) is StrictArray:
            _record("ufunc", ufunc.__name__, len(args), ("out",))
            ufunc(*args, out=out._a)
            return out
    return _apply_ufunc(ufunc, "__call__", inputs, kwargs)


def _apply_ufunc(ufunc, method: str, inputs, kwargs):
    name = ufunc.__name__
    where = name if method == "__call__" else f"{name}.{method}"
    if method == "__call__":
        allowed = _UFUNC_KEYWORDS if ufunc.signature is None else None
    else:
        ufuncs, allowed = _UFUNC_METHODS.get(method, ((), ()))
        if ufuncs is not None and name not in ufuncs:
            raise NotImplementedError(f"`{name}.{method}` is not supported by CuPy")
        if method == "outer":
            allowed = None
    if allowed is not None and kwargs and not set(kwargs) <= set(allowed):
        raise TypeError(f"{where}: CuPy does not take the keyword(s) "
                        f"{sorted(set(kwargs) - set(allowed))} (it takes {sorted(allowed)})")
    _record("ufunc", where, len(inputs), kwargs)
    out = kwargs.get("out")
    if out is not None:
        _check_out(out, where)
        kwargs = dict(kwargs, out=_unwrap(out, where))
    args = []
    for position, value in enumerate(inputs):
        if method == "at" and position == 1:                         # the indices
            args.append(_index(value, where))
        elif type(value) is StrictArray:
            args.append(value._a)
        elif isinstance(value, _SCALARS):
            args.append(value)
        elif type(value) is numpy.ndarray:
            raise _host_array_error(where)
        else:
            raise TypeError(f"{where}: unsupported operand type {type(value).__name__} "
                            f"(CuPy takes device arrays and scalars)")
    return _wrap_out(getattr(ufunc, method)(*args, **kwargs), out)


class StrictUfunc:
    """``xp.<ufunc>``: a NumPy ufunc with CuPy's argument rules."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__
        self.nin, self.nout, self.nargs = ufunc.nin, ufunc.nout, ufunc.nargs

    def __call__(self, *args, **kwargs):
        return _call_ufunc(self._ufunc, args, kwargs)

    def __getattr__(self, method):
        if method not in _UFUNC_METHODS:
            raise AttributeError(f"ufunc {self.__name__!r} has no attribute {method!r}")
        return lambda *args, **kwargs: _apply_ufunc(self._ufunc, method, args, kwargs)

    def __repr__(self):
        return f"<strict ufunc {self.__name__!r}>"


# --- functions ----------------------------------------------------------------------------------
def _strict_function(function, name: str):
    base = name.rsplit(".", 1)[-1]
    host_ok = base in _FROM_HOST
    keywords = _FUNCTION_KEYWORDS.get(base)
    syncs = base in _SYNCING

    def call(*args, **kwargs):
        if keywords is not None and not set(kwargs) <= set(keywords):
            raise TypeError(f"{name}() got keyword(s) {sorted(set(kwargs) - set(keywords))} "
                            f"that CuPy's {name} does not take (it takes {list(keywords)})")
        _record("function", name, len(args), kwargs)
        out = kwargs.get("out")
        if out is not None:
            _check_out(out, name)
        args = _unwrap(args, name, host_ok)
        kwargs = {key: _unwrap(value, name, host_ok) for key, value in kwargs.items()}
        result = function(*args, **kwargs)
        if syncs:
            _implicit(f"{name}() (a synchronisation: the result's size)")
        return _wrap_out(result, out)

    call.__name__ = call.__qualname__ = base
    call.__doc__ = f"numpy.{name} with CuPy's rules (see gpurnn.engine.arrays.strict)."
    return call


class _Namespace:
    """``xp`` for cpu-strict: NumPy's namespace, each function returning strict arrays."""

    def __init__(self, module, prefix: str = ""):
        self._module, self._prefix = module, prefix

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self._module, name)
        if name == "ndarray":
            result = StrictArray
        elif isinstance(value, numpy.ufunc):
            result = StrictUfunc(value)
        elif isinstance(value, types.ModuleType):
            result = _Namespace(value, f"{self._prefix}{name}.")
        elif isinstance(value, type) or not callable(value):
            result = value                       # dtypes, numpy.dtype, constants (pi, newaxis)
        else:
            result = _strict_function(value, self._prefix + name)
        setattr(self, name, result)              # made once, then found without __getattr__
        return result

    def __repr__(self):
        return f"<cpu-strict array module ({self._module.__name__})>"


xp = _Namespace(numpy)


def from_host(value, dtype=None) -> "StrictArray":
    """An explicit host-to-device transfer: a strict array holding a copy of ``value``
    (a strict array of the right dtype is returned as it is, as CuPy's asarray does)."""
    if type(value) is StrictArray:
        return value if dtype is None or value.dtype == dtype else value.astype(dtype)
    _explicit("to_device")
    return StrictArray(numpy.array(value, dtype=dtype, copy=True))


def kernel_buffer(array: "StrictArray") -> numpy.ndarray:
    """The memory behind a strict array, for a kernel launch on the host emulation: what a
    CUDA launch is handed for a CuPy array (its device pointer), so it is neither a
    transfer nor a synchronisation. Writes through it are writes to the array."""
    return array._a


def scatter_add(target, indices, values, host_scatter_add) -> None:
    """``cupyx.scatter_add`` with CuPy's rules, computed by ``host_scatter_add`` on the
    NumPy arrays inside (host indices or values are silent copies to the device)."""
    _record("function", "cupyx.scatter_add", 3, ())
    arrays = []
    for value, what in ((indices, "indices"), (values, "values")):
        if type(value) is StrictArray:
            arrays.append(value._a)
        else:
            if type(value) is numpy.ndarray or type(value) is list:
                _implicit(f"scatter_add {what} from the host (a silent copy to the device)")
            arrays.append(numpy.asarray(value))
    host_scatter_add(target._a, *arrays)


def _function_for(func):
    """The strict counterpart of a NumPy function met through ``__array_function__``."""
    module = func.__module__ or "numpy"
    namespace = xp
    for part in module.split(".")[1:]:
        if part.startswith("_"):          # numpy._core.fromnumeric etc.: the public name
            break
        namespace = getattr(namespace, part)
    return getattr(namespace, func.__name__)


# --- the array ----------------------------------------------------------------------------------
def _strict_method(name: str):
    """NumPy's ``ndarray.<name>`` with CuPy's rules on its arguments, returning strict arrays."""
    where = f"ndarray.{name}"
    syncs = name == "nonzero"

    def method(self, *args, **kwargs):
        if not kwargs and not syncs:                         # the hot path
            _record("method", name, len(args), ())
            for value in args:
                if type(value) not in _PLAIN:
                    args = _unwrap(args, where)
                    break
            result = getattr(self._a, name)(*args)
            return StrictArray(result) if type(result) is numpy.ndarray else _wrap(result)
        _record("method", name, len(args), kwargs)
        out = kwargs.get("out")
        if out is not None:
            _check_out(out, where)
        if args:
            args = _unwrap(args, where)
        if kwargs:
            kwargs = {key: _unwrap(value, where) for key, value in kwargs.items()}
        result = getattr(self._a, name)(*args, **kwargs)
        if syncs:
            _implicit(f"{where}() (a synchronisation: the result's size)")
        return _wrap_out(result, out)

    method.__name__ = method.__qualname__ = name
    return method


def _operators(ufunc):
    """``a op b``, ``b op a`` and ``a op= b`` as ``ufunc`` with CuPy's rules."""
    def forward(self, other):
        return _call_ufunc(ufunc, (self, other), None)

    def reflected(self, other):
        return _call_ufunc(ufunc, (other, self), None)

    def inplace(self, other):
        return _apply_ufunc(ufunc, "__call__", (self, other), {"out": (self,)})
    return forward, reflected, inplace



class StrictArray:
    """A NumPy array that behaves as a CuPy array would (see the module docstring).

    Arithmetic, comparisons and in-place operators are the ufuncs with CuPy's rules; NumPy
    ufuncs and functions given a strict array dispatch (NEP 13/18) to ``xp``'s, as CuPy's
    do. Array methods are NumPy's, wrapped on first use.
    """

    __slots__ = ("_a",)
    __hash__ = None

    def __init__(self, array: numpy.ndarray):
        self._a = array

    # --- CuPy's refusals and the guarded conversions -----------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "__call__":
            return _call_ufunc(ufunc, inputs, kwargs)
        return _apply_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        try:
            strict = _function_for(func)
        except AttributeError:
            return NotImplemented
        return strict(*args, **kwargs)

    def get(self):
        """An explicit copy to the host (CuPy's ``ndarray.get``)."""
        _record("method", "get", 0, ())
        _explicit("get()")
        return self._a.copy()

    def _scalar(self, convert, what):
        _implicit(f"{what} on a device array (a device-to-host synchronisation)")
        return convert(self._a)

    def __float__(self):
        return self._scalar(float, "float()")

    def __int__(self):
        return self._scalar(int, "int()")

    def __bool__(self):
        return self._scalar(bool, "bool()")

    def __complex__(self):
        return self._scalar(complex, "complex()")

    def __format__(self, spec):                  # CuPy formats a copy read back: a sync
        return self._scalar(lambda a: format(a, spec), "format()")

    def __str__(self):
        return self._scalar(str, "str()")

    def item(self):
        _record("method", "item", 0, ())
        return self._scalar(lambda a: a.item(), ".item()")

    def tolist(self):
        _record("method", "tolist", 0, ())
        return self._scalar(lambda a: a.tolist(), ".tolist()")

    def fill(self, value):
        _record("method", "fill", 1, ())
        if type(value) is numpy.ndarray and value.ndim:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill (CuPy)")
        self._a.fill(value._a if type(value) is StrictArray else value)

    # --- indexing ---------------------------------------------------------------------
    def __getitem__(self, key):
        if type(key) not in _PLAIN:
            key = _index(key, "indexing")
        result = self._a[key]
        return StrictArray(result) if type(result) is numpy.ndarray else _wrap(result)

    def __setitem__(self, key, value):
        index = _index(key, "index assignment")
        if type(value) is StrictArray:
            value = value._a
        elif type(value) is numpy.ndarray or type(value) is list:
            advanced = any(type(k) in (numpy.ndarray, StrictArray, list)
                           for k in (key if type(key) is tuple else (key,)))
            if not advanced:
                raise ValueError("device_array[...] = host_array is not allowed (CuPy: "
                                 "'non-scalar numpy.ndarray cannot be used for fill'); "
                                 "move the values with to_device() or xp.asarray() first")
            _implicit("index assignment of host values (a silent copy to the device)")
        self._a[index] = value

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    # --- metadata (host-side on CuPy too) --------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: StrictArray(self._a.T))
    device = "cpu-strict"

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if not callable(getattr(numpy.ndarray, name)):       # AttributeError as NumPy's
            _record("attribute", name, 0, ())
            return _wrap(getattr(self._a, name))
        method = _strict_method(name)
        setattr(StrictArray, name, method)                   # found directly from now on
        return method.__get__(self)

    def __copy__(self):
        return StrictArray(self._a.copy())

    def __deepcopy__(self, memo):
        return StrictArray(self._a.copy())

    def __reduce__(self):                        # pickling copies to the host, as CuPy's
        return from_host, (self._a.copy(),)

    def __repr__(self):
        return f"strict_{numpy.array_repr(self._a)}"


for _name, _ufunc in (("add", numpy.add), ("sub", numpy.subtract), ("mul", numpy.multiply),
                      ("truediv", numpy.true_divide), ("floordiv", numpy.floor_divide),
                      ("mod", numpy.remainder), ("pow", numpy.power),
                      ("matmul", numpy.matmul), ("and", numpy.bitwise_and),
                      ("or", numpy.bitwise_or), ("xor", numpy.bitwise_xor),
                      ("lshift", numpy.left_shift), ("rshift", numpy.right_shift)):
    for _prefix, _function in zip(("", "r", "i"), _operators(_ufunc)):
        setattr(StrictArray, f"__{_prefix}{_name}__", _function)
for _name, _ufunc in (("lt", numpy.less), ("le", numpy.less_equal), ("eq", numpy.equal),
                      ("ne", numpy.not_equal), ("gt", numpy.greater),
                      ("ge", numpy.greater_equal)):
    setattr(StrictArray, f"__{_name}__", _operators(_ufunc)[0])
for _name, _ufunc in (("neg", numpy.negative), ("pos", numpy.positive),
                      ("abs", numpy.absolute), ("invert", numpy.invert)):
    setattr(StrictArray, f"__{_name}__",
            lambda self, _ufunc=_ufunc: _call_ufunc(_ufunc, (self,), None))
