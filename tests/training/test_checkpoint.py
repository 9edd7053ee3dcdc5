"""Atomic, pickle-free checkpoints (gpurnn.training.checkpoint)."""
import json
import zipfile

import numpy
import pytest

from gpurnn.training import checkpoint

from gpurnn.training import optim
from gpurnn.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpurnn.training.data import SPECIAL_TOKENS, Vocabulary


def _fields():
    rng = numpy.random.default_rng(3)
    params = {"U": rng.normal(size=(5, 4)).astype(numpy.float32), "b": rng.normal(size=4)}
    opt = optim.Adam(lr=0.01)
    opt.step(params, {k: numpy.ones_like(v) for k, v in params.items()})
    rng.normal(size=7)  # move the generator off its seed state
    return dict(params=params, optimizer_state=opt.state_dict(),
                vocab=Vocabulary.from_list(list(SPECIAL_TOKENS) + ["the", "dog"]),
                config={"hidden": 8, "cell": "elman", "lr": 0.01, "dims": [1, 2]},
                rng_state=rng.bit_generator.state, step=12,
                extra={"batcher": {"epoch": 1, "index": 4}, "losses": numpy.array([3.0, 2.5])})


def _save(path, **changes):
    return save_checkpoint(path, **{**_fields(), **changes})


def test_round_trip_is_exact(tmp_path):
    fields = _fields()
    path = save_checkpoint(tmp_path / "ck.npz", **fields)
    assert path == tmp_path / "ck.npz"
    loaded = load_checkpoint(path)
    assert loaded.params.keys() == fields["params"].keys()
    for name, array in fields["params"].items():
        assert loaded.params[name].dtype == array.dtype
        assert numpy.array_equal(loaded.params[name], array)
    assert loaded.vocab == fields["vocab"].to_list()
    assert Vocabulary.from_list(loaded.vocab) == fields["vocab"]
    assert loaded.config == fields["config"] and loaded.step == 12
    assert loaded.rng_state == fields["rng_state"]
    restored, original = numpy.random.default_rng(), numpy.random.default_rng()
    restored.bit_generator.state, original.bit_generator.state = loaded.rng_state, fields["rng_state"]
    assert numpy.array_equal(restored.normal(size=5), original.normal(size=5))
    assert loaded.extra["batcher"] == {"epoch": 1, "index": 4}
    assert numpy.array_equal(loaded.extra["losses"], [3.0, 2.5])
    state = loaded.optimizer_state
    assert {k: v for k, v in state.items() if k != "slots"} == \
        {k: v for k, v in fields["optimizer_state"].items() if k != "slots"}
    for slot, per_param in fields["optimizer_state"]["slots"].items():
        for name, array in per_param.items():
            assert numpy.array_equal(state["slots"][slot][name], array)
    optim.Adam().load_state_dict(state)  # usable as is


def test_overwrite_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ck.npz"
    _save(path, step=1)
    _save(path, step=2)
    assert load_checkpoint(path).step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]


def test_nan_is_refused_at_save_time(tmp_path):
    params = {"U": numpy.array([1.0, numpy.nan])}
    with pytest.raises(ValueError, match=r"params\['U'\] contains NaN"):
        _save(tmp_path / "ck.npz", params=params)
    with pytest.raises(ValueError, match="NaN or Inf"):
        _save(tmp_path / "ck.npz", params={"U": numpy.array([numpy.inf])})
    assert list(tmp_path.iterdir()) == []


def test_bad_fields_are_refused(tmp_path):
    with pytest.raises(TypeError, match="config must be JSON-serialisable"):
        _save(tmp_path / "ck.npz", config={"x": numpy.float32(1.0)})
    with pytest.raises(ValueError, match="step"):
        _save(tmp_path / "ck.npz", step=-1)
    with pytest.raises(ValueError, match="params"):
        _save(tmp_path / "ck.npz", params={})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _save(tmp_path / "nowhere" / "ck.npz")
    assert list(tmp_path.iterdir()) == []


def test_temporary_file_removed_after_failed_save(tmp_path, monkeypatch):
    (tmp_path / "ck.npz").mkdir()  # os.replace onto a directory fails after the write
    with pytest.raises(OSError):
        _save(tmp_path / "ck.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(numpy, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path / "other.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]


def _expect_error(path, pattern):
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    error = info.value  # no chained traceback from deep inside numpy or zipfile is shown
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_missing_empty_junk_and_truncated_files(tmp_path):
    _expect_error(tmp_path / "absent.npz", "no such checkpoint file")
    _expect_error(tmp_path, "not a file")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _expect_error(empty, "empty file")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(numpy.random.default_rng(0).bytes(500))
    _expect_error(junk, "not an .npz")
    good = _save(tmp_path / "good.npz")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[:len(data) // 2])
    _expect_error(truncated, "truncated or corrupt")
    zip_junk = tmp_path / "zipjunk.npz"
    zip_junk.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    _expect_error(zip_junk, "truncated or corrupt")


def test_flipped_byte_is_detected(tmp_path):
    good = _save(tmp_path / "good.npz", params={"U": numpy.zeros(4096)})
    data = bytearray(good.read_bytes())
    data[2000] ^= 0xFF  # inside the zeros of params/U: the zip CRC no longer matches
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    _expect_error(bad, "truncated or corrupt")


def _write_npz(path, meta=None, **arrays):
    if meta is not None:
        arrays["__gpurnn__"] = numpy.frombuffer(json.dumps(meta).encode(), dtype=numpy.uint8)
    numpy.savez(path, **arrays)
    return path


def _meta(**changes):
    meta = {"format": checkpoint.FORMAT_NAME, "version": checkpoint.FORMAT_VERSION, "step": 0,
            "vocab": list(SPECIAL_TOKENS), "config": {}, "rng_state": None, "params": ["U"],
            "optimizer": {}, "extra": None}
    meta.update(changes)
    return meta


def test_not_gpurnn_version_and_missing_parts(tmp_path):
    assert load_checkpoint(_write_npz(tmp_path / "ok.npz", _meta(), **{"params/U": numpy.ones(2)})
                           ).params["U"].tolist() == [1.0, 1.0]
    _expect_error(_write_npz(tmp_path / "plain.npz", x=numpy.ones(3)), "not a gpurnn checkpoint")
    _expect_error(_write_npz(tmp_path / "other.npz", _meta(format="keras")),
                  "not a gpurnn checkpoint")
    _expect_error(_write_npz(tmp_path / "v9.npz", _meta(version=9)),
                  "format version 9; this gpurnn reads versions 1, 2")
    meta = _meta()
    del meta["vocab"], meta["step"]
    _expect_error(_write_npz(tmp_path / "keys.npz", meta), "lacks step, vocab")
    _expect_error(_write_npz(tmp_path / "array.npz", _meta()), "lacks the array 'params/U'")
    _expect_error(_write_npz(tmp_path / "opt.npz", _meta(optimizer={"m": {"__array__": "optimizer/m"}}),
                             **{"params/U": numpy.ones(2)}), "lacks the array 'optimizer/m'")
    bad_json = tmp_path / "badjson.npz"
    numpy.savez(bad_json, __gpurnn__=numpy.frombuffer(b"{not json", dtype=numpy.uint8))
    _expect_error(bad_json, "corrupt checkpoint metadata")


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    numpy.savez(path, __gpurnn__=numpy.array([{"a": 1}], dtype=object))
    _expect_error(path, "truncated or corrupt")


def test_plain_zip_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "archive.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
        archive.writestr("__gpurnn__", "not an array")
    _expect_error(path, "not a gpurnn checkpoint")


@pytest.mark.parametrize("edit, message", [
    (lambda meta, arrays: arrays.update({"optimizer/slots/m/U": numpy.full((5, 4), numpy.nan)}),
     r"optimizer state 'slots/m/U' holds NaN or Inf"),
    (lambda meta, arrays: arrays.update({"params/U": numpy.ones((5, 4), numpy.int8)}),
     r"parameter 'U' has dtype int8; expected float32 or float64"),
    (lambda meta, arrays: arrays.update({"optimizer/slots/v/b": numpy.ones(4, numpy.int64)}),
     r"optimizer state 'slots/v/b' has dtype int64"),
    (lambda meta, arrays: arrays.update({"params/b": numpy.array([1.0, numpy.inf, 0, 0])}),
     r"parameter 'b' holds NaN or Inf"),
    (lambda meta, arrays: meta.update(step=-5), r"step -5 is out of range"),
    (lambda meta, arrays: meta.update(step="12"), r"step '12' is out of range"),
    (lambda meta, arrays: meta.update(step=True), r"step True is out of range"),
])
def test_hand_edited_values_are_refused(tmp_path, edit, message):
    good = _save(tmp_path / "good.npz")
    with numpy.load(good) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(arrays.pop("__gpurnn__").tobytes())
    edit(meta, arrays)
    _expect_error(_write_npz(tmp_path / "edited.npz", meta, **arrays), message)


def test_what_load_refuses_is_never_saved(tmp_path):
    fields = _fields()
    fields["optimizer_state"]["slots"]["v"]["U"][0, 0] = numpy.inf
    with pytest.raises(checkpoint.NonFiniteError,
                       match=r"optimizer/slots/v/U contains NaN or Inf; refusing to save"):
        save_checkpoint(tmp_path / "ck.npz", **fields)
    with pytest.raises(checkpoint.NonFiniteError, match=r"extra/losses contains NaN"):
        _save(tmp_path / "ck.npz", extra={"losses": numpy.array([numpy.nan])})
    assert list(tmp_path.iterdir()) == []
