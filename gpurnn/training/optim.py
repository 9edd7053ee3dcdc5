"""Optimizers that update a params dict in place from a grads dict, on NumPy or CuPy.

Every update is written once against ``xp = get_array_module(param)`` with in-place operations
(``out=``, ``*=``) into per-parameter buffers, so a step allocates nothing after the first.
``state_dict()`` holds host NumPy arrays and Python scalars (what ``gpurnn.checkpoint`` saves);
``load_state_dict`` restores it exactly, and the arrays move to the parameters' device at the
next :meth:`Optimizer.step`.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy

from ..engine.gpu import fused
from ..engine.arrays.backend import device_of, get_array_module, to_device, to_host
from ..engine.plan import Plan

__all__ = ["Optimizer", "SGD", "Momentum", "Adagrad", "RMSprop", "Adam", "Rprop",
           "make_optimizer", "HalveOnPlateau", "scheduled_lr", "global_norm", "clip_grad_norm",
           "clip_grad_value", "grads_finite", "EPS_PLACEMENTS"]


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


class Optimizer:
    """Base class: ``step(params, grads)`` updates every ``params[name]`` in place.

    Subclasses name their per-parameter buffers in ``slots`` (each starts as zeros, or as
    :meth:`_initial` says) and implement :meth:`_update`. ``lr`` may be changed between steps
    (see :class:`HalveOnPlateau` and :func:`scheduled_lr`); ``t`` counts the steps taken.

    ``weight_decay`` (every optimizer) is decoupled: before each update the weight matrices
    and embeddings (parameters of two or more dimensions; biases never) shrink by
    ``1 - lr * weight_decay``, as PyTorch's AdamW does. With Adam that is AdamW; with SGD
    it equals an L2 penalty of ``weight_decay / 2 * |p|**2``.
    """

    name = ""
    slots: tuple[str, ...] = ()
    plan = Plan()  # a fused plan updates CuPy arrays with one kernel per parameter

    def __init__(self, lr: float, weight_decay: float = 0.0):
        self.lr = _check_positive("lr", lr)
        self.weight_decay = _check_nonnegative("weight_decay", weight_decay)
        self.t = 0
        self._state: dict[str, dict[str, object]] = {slot: {} for slot in self.slots}
        self._scratch: dict[str, object] = {}  # one temporary per parameter, never saved
        self._placed = True  # False after load_state_dict: the state still lives on the host

    def hyperparameters(self) -> dict:
        """The constructor arguments, as saved in :meth:`state_dict`."""
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def _initial(self, slot: str, param):
        return get_array_module(param).zeros_like(param)

    def _update(self, name: str, param, grad, scratch) -> None:
        raise NotImplementedError

    def step(self, params: dict, grads: dict) -> None:
        """One update of every parameter, in place; ``grads`` has the same keys and shapes."""
        if params.keys() != grads.keys():
            raise ValueError(f"grads must have the keys of params {sorted(params)}, "
                             f"got {sorted(grads)}")
        if not self._placed:
            self._place(params)
        self.t += 1
        for name, param in params.items():
            grad = grads[name]
            if grad.shape != param.shape:
                raise ValueError(f"grads[{name!r}] has shape {grad.shape}, expected "
                                 f"{param.shape} like params[{name!r}]")
            for slot in self.slots:
                if name not in self._state[slot]:
                    self._state[slot][name] = self._initial(slot, param)
            if name not in self._scratch:
                self._scratch[name] = get_array_module(param).empty_like(param)
            if self.weight_decay and param.ndim >= 2:
                # decoupled (Loshchilov & Hutter's AdamW, PyTorch's p.mul_(1 - lr * wd)),
                # on the weight matrices and embeddings only, never on a bias
                param *= 1.0 - self.lr * self.weight_decay
            slots = [self._state[slot][name] for slot in self.slots]
            if not fused.optimizer_update(self.plan, self, param, grad, slots):
                self._update(name, param, grad, self._scratch[name])

    def _place(self, params: dict) -> None:
        # Arrays loaded from a checkpoint are NumPy; move each next to its parameter, once.
        for per_param in self._state.values():
            for name, array in per_param.items():
                if name in params:
                    per_param[name] = to_device(array, device_of(params[name]))
        self._placed = True

    def state_dict(self) -> dict:
        """``{"name", "t", "hyper": {...}, "slots": {slot: {param: numpy array}}}``."""
        return {"name": self.name, "t": self.t, "hyper": self.hyperparameters(),
                "slots": {slot: {name: numpy.array(to_host(a)) for name, a in per_param.items()}
                          for slot, per_param in self._state.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output exactly (hyperparameters included)."""
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        missing = {"t", "hyper", "slots"} - set(state)
        if missing or set(state["slots"]) != set(self.slots):
            raise ValueError(f"optimizer state for {self.name!r} must have t, hyper and slots "
                             f"{list(self.slots)}; got keys {sorted(state)}")
        self.__init__(**state["hyper"])  # validates and sets the hyperparameters, clears buffers
        self.t = int(state["t"])
        self._state = {slot: {name: numpy.array(a) for name, a in per_param.items()}
                       for slot, per_param in state["slots"].items()}
        self._placed = False


class SGD(Optimizer):
    """Plain gradient descent, as in the tutorial: ``p -= lr * g``."""

    name = "sgd"

    def __init__(self, lr: float = 0.005, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)

    def _update(self, name, param, grad, scratch):
        get_array_module(param).multiply(grad, self.lr, out=scratch)
        param -= scratch


class Momentum(Optimizer):
    """Heavy-ball momentum: ``v = momentum * v + g``; ``p -= lr * v``, or with Nesterov
    ``p -= lr * (g + momentum * v)``. The velocity excludes ``lr``, so changing ``lr``
    changes the step at once."""

    name = "momentum"
    slots = ("velocity",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.momentum = _check_fraction("momentum", momentum)
        self.nesterov = bool(nesterov)

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum,
                "nesterov": self.nesterov}

    def _update(self, name, param, grad, scratch):
        xp = get_array_module(param)
        velocity = self._state["velocity"][name]
        velocity *= self.momentum
        velocity += grad
        if self.nesterov:
            xp.multiply(velocity, self.momentum, out=scratch)
            scratch += grad
        else:
            xp.copyto(scratch, velocity)
        scratch *= self.lr
        param -= scratch


# Where eps goes in Adagrad's and RMSprop's division: "outside" the root, g / (sqrt(G) + eps)
# (PyTorch, Keras), or "inside", g / sqrt(G + eps) (min-char-rnn, TensorFlow 1's RMSProp).
# At the first step, with G = g², the two differ wherever |g| is near sqrt(eps).
EPS_PLACEMENTS = ("outside", "inside")


def _check_placement(value) -> str:
    if value not in EPS_PLACEMENTS:
        raise ValueError(f"eps_placement must be 'outside' (g / (sqrt(G) + eps), PyTorch's) or "
                         f"'inside' (g / sqrt(G + eps), min-char-rnn's), got {value!r}")
    return value


class _RootScaled(Optimizer):
    """An update ``p -= lr * g / root(G)`` with a running sum or mean of squares ``G``,
    eps placed as ``eps_placement`` says (Adagrad, RMSprop)."""

    def __init__(self, lr, eps, eps_placement, weight_decay):
        super().__init__(lr, weight_decay)
        self.eps = _check_positive("eps", eps)
        self.eps_placement = _check_placement(eps_placement)

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps,
                "eps_placement": self.eps_placement}

    def _divide_step(self, xp, param, grad, squares, scratch):
        """``param -= lr * grad / root(squares)`` through ``scratch``."""
        if self.eps_placement == "inside":
            xp.add(squares, self.eps, out=scratch)
            xp.sqrt(scratch, out=scratch)
        else:
            xp.sqrt(squares, out=scratch)
            scratch += self.eps
        xp.divide(grad, scratch, out=scratch)
        scratch *= self.lr
        param -= scratch


class Adagrad(_RootScaled):
    """``G += g**2``; ``p -= lr * g / (sqrt(G) + eps)``, or with ``eps_placement="inside"``
    ``p -= lr * g / sqrt(G + eps)`` (min-char-rnn's)."""

    name = "adagrad"
    slots = ("sum_sq",)

    def __init__(self, lr: float = 0.01, eps: float = 1e-8, eps_placement: str = "outside",
                 weight_decay: float = 0.0):
        super().__init__(lr, eps, eps_placement, weight_decay)

    def _update(self, name, param, grad, scratch):
        xp = get_array_module(param)
        sum_sq = self._state["sum_sq"][name]
        xp.multiply(grad, grad, out=scratch)
        sum_sq += scratch
        self._divide_step(xp, param, grad, sum_sq, scratch)


class RMSprop(_RootScaled):
    """``E = decay * E + (1 - decay) * g**2``; ``p -= lr * g / (sqrt(E) + eps)``, or with
    ``eps_placement="inside"`` ``p -= lr * g / sqrt(E + eps)`` (TensorFlow 1's)."""

    name = "rmsprop"
    slots = ("mean_sq",)

    def __init__(self, lr: float = 0.001, decay: float = 0.9, eps: float = 1e-8,
                 eps_placement: str = "outside", weight_decay: float = 0.0):
        super().__init__(lr, eps, eps_placement, weight_decay)
        self.decay = _check_fraction("decay", decay)

    def hyperparameters(self):
        return {**super().hyperparameters(), "decay": self.decay}

    def _update(self, name, param, grad, scratch):
        xp = get_array_module(param)
        mean_sq = self._state["mean_sq"][name]
        xp.multiply(grad, grad, out=scratch)
        scratch *= 1.0 - self.decay
        mean_sq *= self.decay
        mean_sq += scratch
        self._divide_step(xp, param, grad, mean_sq, scratch)


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba): ``m = b1 m + (1-b1) g``,
    ``v = b2 v + (1-b2) g**2``, ``p -= lr * m̂ / (sqrt(v̂) + eps)`` with ``m̂ = m / (1-b1**t)``,
    ``v̂ = v / (1-b2**t)``; with ``weight_decay``, AdamW (decoupled, see :class:`Optimizer`)."""

    name = "adam"
    slots = ("m", "v")

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.beta1 = _check_fraction("beta1", beta1)
        self.beta2 = _check_fraction("beta2", beta2)
        self.eps = _check_positive("eps", eps)

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps}

    def _update(self, name, param, grad, scratch):
        xp = get_array_module(param)
        m, v = self._state["m"][name], self._state["v"][name]
        m *= self.beta1
        xp.multiply(grad, 1.0 - self.beta1, out=scratch)
        m += scratch
        v *= self.beta2
        xp.multiply(grad, grad, out=scratch)
        scratch *= 1.0 - self.beta2
        v += scratch
        correction1 = 1.0 - self.beta1 ** self.t
        correction2 = 1.0 - self.beta2 ** self.t
        xp.sqrt(v, out=scratch)
        scratch *= 1.0 / math.sqrt(correction2)  # sqrt(v̂)
        scratch += self.eps
        xp.divide(m, scratch, out=scratch)
        scratch *= self.lr / correction1
        param -= scratch


class Rprop(Optimizer):
    """Resilient backpropagation as in seed 001 (Roelants' ``update_rprop``).

    Each weight has its own step, starting at ``lr``. When the sign of its gradient equals the
    previous sign the step grows by ``eta_plus``, otherwise it shrinks by ``eta_minus``; then
    ``p -= sign(g) * step``. As in the seed the previous sign starts at 0, so the first step
    is ``lr * eta_minus``. Unlike the seed the step is clipped to [step_min, step_max]: a weight
    whose gradient stays exactly 0 (an unused embedding row) would otherwise grow its step
    without bound and jump when the gradient returns. Pass 0 and inf to follow the seed exactly.
    Only the gradient's sign is used, so it suits full-batch training.
    """

    name = "rprop"
    slots = ("step", "prev_sign")

    def __init__(self, lr: float = 0.001, eta_plus: float = 1.2, eta_minus: float = 0.5,
                 step_min: float = 1e-6, step_max: float = 50.0, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.eta_plus = _check_positive("eta_plus", eta_plus)
        self.eta_minus = _check_positive("eta_minus", eta_minus)
        if isinstance(step_min, bool) or not isinstance(step_min, Real) \
                or not 0 <= step_min <= self.lr:
            raise ValueError(f"step_min must be a number in [0, lr={self.lr}], got {step_min!r}")
        if isinstance(step_max, bool) or not isinstance(step_max, Real) \
                or not step_max >= self.lr:
            raise ValueError(f"step_max must be a number >= lr={self.lr}, got {step_max!r}")
        self.step_min, self.step_max = float(step_min), float(step_max)

    def hyperparameters(self):
        return {**super().hyperparameters(), "eta_plus": self.eta_plus,
                "eta_minus": self.eta_minus, "step_min": self.step_min,
                "step_max": self.step_max}

    def _initial(self, slot, param):
        xp = get_array_module(param)
        return xp.full_like(param, self.lr) if slot == "step" else xp.zeros_like(param)

    def _update(self, name, param, grad, scratch):
        xp = get_array_module(param)
        step, prev_sign = self._state["step"][name], self._state["prev_sign"][name]
        sign = xp.sign(grad, out=scratch)
        # Signs are -1, 0 or 1, so min(|sign - prev|, 1) is 0 where they agree and 1 where not;
        # the factor eta_plus + (eta_minus - eta_plus) * that is computed in prev_sign's buffer.
        xp.subtract(sign, prev_sign, out=prev_sign)
        xp.abs(prev_sign, out=prev_sign)
        xp.minimum(prev_sign, 1.0, out=prev_sign)
        prev_sign *= self.eta_minus - self.eta_plus
        prev_sign += self.eta_plus
        step *= prev_sign
        xp.clip(step, self.step_min, self.step_max, out=step)
        xp.copyto(prev_sign, sign)
        sign *= step
        param -= sign


_OPTIMIZERS = {cls.name: cls for cls in (SGD, Momentum, Adagrad, RMSprop, Adam, Rprop)}


def make_optimizer(name: str, lr: float | None = None, **kwargs) -> Optimizer:
    """An optimizer by name (sgd, momentum, adagrad, rmsprop, adam, rprop); ``lr=None`` takes
    that optimizer's default, other keyword arguments go to its constructor."""
    if name not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {name!r}")
    cls = _OPTIMIZERS[name]
    try:
        return cls(**kwargs) if lr is None else cls(lr, **kwargs)
    except TypeError as error:  # an unknown keyword: say which ones this optimizer takes
        raise TypeError(f"{name}: {error}; it takes {', '.join(cls().hyperparameters())}") from None


class HalveOnPlateau:
    """The tutorial's schedule: when a measured loss is higher than the previous one,
    multiply ``optimizer.lr`` by ``factor`` (0.5: halve), never below ``min_lr``."""

    def __init__(self, optimizer: Optimizer, factor: float = 0.5, min_lr: float = 0.0):
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        if not 0 <= min_lr:
            raise ValueError(f"min_lr must be >= 0, got {min_lr!r}")
        self.optimizer, self.factor, self.min_lr = optimizer, float(factor), float(min_lr)
        self.last_loss: float | None = None

    def step(self, loss: float) -> bool:
        """Record a loss; return True when it rose and the learning rate was lowered."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"loss must be finite, got {loss}")
        rose = self.last_loss is not None and loss > self.last_loss
        if rose:
            self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
        self.last_loss = loss
        return rose

    def state_dict(self) -> dict:
        return {"factor": self.factor, "min_lr": self.min_lr, "last_loss": self.last_loss}

    def load_state_dict(self, state: dict) -> None:
        self.factor, self.min_lr = float(state["factor"]), float(state["min_lr"])
        self.last_loss = None if state["last_loss"] is None else float(state["last_loss"])


def scheduled_lr(step: int, lr: float, *, total_steps: int, warmup_steps: int = 0,
                 min_lr: float | None = None, cosine: bool = True) -> float:
    """The learning rate of the update that makes step ``step + 1`` (``step`` counts the
    updates before it), nanoGPT's shape: a linear warm-up ``lr * (step + 1) /
    (warmup_steps + 1)`` for the first ``warmup_steps`` updates; then, with ``cosine``,
    ``min_lr + (lr - min_lr) * (1 + cos(pi * r)) / 2`` where r runs from 0 after the warm-up
    to 1 at ``total_steps``, and ``min_lr`` beyond; without it, ``lr``. ``min_lr`` defaults
    to ``lr / 10``. A pure function of the step: a resumed run continues the same curve.

    ``total_steps`` is the whole run's: a run resumed with more steps follows the longer
    run's curve from the step it resumed at (a higher rate than the shorter run had there).
    Set it on an optimizer before each update: ``opt.lr = scheduled_lr(step, 3e-3, ...)``.
    """
    lr = _check_positive("lr", lr)
    min_lr = lr / 10 if min_lr is None else _check_nonnegative("min_lr", min_lr)
    if min_lr > lr:
        raise ValueError(f"min_lr {min_lr} is above lr {lr}: the cosine decays from lr down "
                         f"to min_lr")
    for name, value in (("step", step), ("total_steps", total_steps),
                        ("warmup_steps", warmup_steps)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if not cosine:
        return lr
    if step >= total_steps or total_steps <= warmup_steps:
        return min_lr
    ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))


def global_norm(grads: dict) -> float:
    """The L2 norm of all grads together (a Python float: one device sync)."""
    if not grads:
        return 0.0
    xp = get_array_module(*grads.values())
    return float(xp.sqrt(sum(xp.vdot(g.ravel(), g.ravel()) for g in grads.values())))


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all grads in place so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (a Python float: one device sync). A non-finite norm is
    returned without scaling anything; check it (or :func:`grads_finite`) before stepping.
    """
    max_norm = _check_positive("max_norm", max_norm)
    norm = global_norm(grads)
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / norm
        for grad in grads.values():
            grad *= scale
    return norm


def clip_grad_value(grads: dict, max_value: float) -> None:
    """Clip every gradient element to [−max_value, max_value], in place (min-char-rnn's
    ``np.clip(d, -5, 5, out=d)``, PyTorch's ``clip_grad_value_``). No device sync; NaN stays
    NaN, so measure the norm (or :func:`grads_finite`) first to catch a bad step."""
    max_value = _check_positive("max_value", max_value)
    for grad in grads.values():
        get_array_module(grad).clip(grad, -max_value, max_value, out=grad)


def grads_finite(grads: dict) -> bool:
    """True when no gradient holds NaN or Inf (one device sync for all of them)."""
    if not grads:
        return True
    xp = get_array_module(*grads.values())
    return bool(xp.stack([xp.isfinite(g).all() for g in grads.values()]).all())
