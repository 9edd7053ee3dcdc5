"""The CPU time loops' arrangements against the plain per-step path.

The gated cells' forward multiplies by a contiguous copy of (scale ⊙ W_hh)ᵀ (the same values
as the transposed view; the BLAS may sum in another order, so agreement is to rounding) and
applies the LSTM's sigmoid affine to whole gate rows (× ½, + ½ on sigmoid rows; × 1, + 0 on
g's: the same operations on the same values, so bit-identical gate values).
"""
import numpy as np
import pytest

from gpurnn.engine.recurrences.gated import GRUCell, LSTMCell

TIGHT = 1e-12


def _params(rng, cell, H, inputs, P=0):
    G = cell.gates
    R = P or H
    p = {"weight_ih": rng.normal(size=(G * H, inputs)) * 0.4,
         "weight_hh": rng.normal(size=(G * H, R)) * 0.4,
         "bias_ih": rng.normal(size=G * H) * 0.2, "bias_hh": rng.normal(size=G * H) * 0.2}
    if P:
        p["weight_hr"] = rng.normal(size=(P, H)) * 0.4
    return p


def _rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


@pytest.mark.parametrize("kind, P, masked", [("gru", 0, False), ("gru", 0, True),
                                             ("lstm", 0, False), ("lstm", 0, True),
                                             ("lstm", 3, False), ("lstm", 3, True)])
@pytest.mark.parametrize("batch", [1, 5])
def test_forward_equals_the_plain_steps_in_float64(kind, P, masked, batch):
    rng = np.random.default_rng(batch * 7 + P + masked)
    H, inputs, steps = 6, 4, 7
    cell = GRUCell() if kind == "gru" else LSTMCell(True, P)
    params = _params(rng, cell, H, inputs, P)
    width = cell.state_size(H)
    if masked:
        cell.state_mask = (rng.random((batch, P or H)) > 0.3) / 0.7
    x = rng.normal(size=(steps, batch, inputs))
    s = rng.normal(size=(batch, width))
    xin = cell.project_inputs(params, x)
    rows = [xin[t].copy() for t in range(steps)]
    states = cell.forward(params, xin, s, steps).copy()
    for t in range(steps):
        s = cell.step(params, rows[t], s)
        assert _rel(states[t], s) <= TIGHT


def test_lstm_whole_row_affine_gives_the_block_values_bit_for_bit():
    rng = np.random.default_rng(3)
    H, batch, steps = 5, 3, 4
    cell = LSTMCell()
    params = _params(rng, cell, H, 4)
    x = rng.normal(size=(steps, batch, 4)).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in params.items()}
    h0 = rng.normal(size=(batch, 2 * H)).astype(np.float32)
    xin = cell.project_inputs(params, x)
    pre = xin.gates.copy()
    states = cell.forward(params, xin, h0, steps)
    WT = cell._scaled_WT(params["weight_hh"], H)
    h = h0[:, :H]
    for t in range(steps):                                   # the block-wise formulation
        a = pre[t] + h @ WT
        a = np.tanh(a)
        for block in (a[:, :2 * H], a[:, 3 * H:]):
            block *= 0.5
            block += 0.5
        np.testing.assert_array_equal(xin.gates[t], a)
        h = states[t, :, :H]


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_scaled_weights_are_a_contiguous_copy_of_the_same_values(kind):
    rng = np.random.default_rng(0)
    cell = GRUCell() if kind == "gru" else LSTMCell()
    W = rng.normal(size=(cell.gates * 4, 4))
    WT = cell._scaled_WT(W, 4)
    assert WT.flags.c_contiguous
    np.testing.assert_array_equal(WT, (W * cell.gate_scale(4, W)[:, None]).T)


def test_lstm_backward_factors_equal_the_per_block_formulas_bit_for_bit():
    rng = np.random.default_rng(5)
    H, batch, steps = 5, 3, 6
    cell = LSTMCell()
    params = {k: v.astype(np.float32) for k, v in _params(rng, cell, H, 4).items()}
    x = rng.normal(size=(steps, batch, 4)).astype(np.float32)
    h0 = rng.normal(size=(batch, 2 * H)).astype(np.float32)
    xin = cell.project_inputs(params, x)
    states = cell.forward(params, xin, h0, steps)
    cell.backward_stepper(params, xin, h0, states)
    i, f, g, o = (xin.gates[..., k * H:(k + 1) * H] for k in range(4))
    c = states[..., H:]
    c_prev = np.concatenate([h0[None, :, H:], c[:-1]])
    tc = np.tanh(c)
    expected = np.stack([g * ((1 - i) * i), c_prev * ((1 - f) * f), i * (1 - g * g),
                         tc * ((1 - o) * o)], axis=2)
    np.testing.assert_array_equal(xin.K, expected)
    np.testing.assert_array_equal(xin.K2, (1 - tc * tc) * o)
