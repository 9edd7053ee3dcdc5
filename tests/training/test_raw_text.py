"""Raw text: --level char (every character, layout kept) and --level byte (any file),
their split, vocabulary, training, samples, evaluation, and the older char checkpoints."""
import json

import numpy
import pytest

from gpurnn.tools import cli
from gpurnn.training import checkpoint as C
from gpurnn.training import data as D
from gpurnn.training.config import TrainConfig
from gpurnn.training.corpus import WARMUP_LENGTH, load_data
from gpurnn.training.evaluation import evaluate_file
from gpurnn.training.generate import UnknownWordWarning, load_language_model, sample
from gpurnn.training.train import Trainer

PLAY = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.\n\n")


def play_text(repeats=120):
    """A play's layout: speaker lines, indented speech, blank lines between turns."""
    rng = numpy.random.default_rng(0)
    names, lines = ["First Citizen", "All", "Menenius"], ["Speak, speak.", "We know't.",
                                                         "Hear me speak.", "Resolved."]
    return PLAY + "".join(f"{rng.choice(names)}:\n    {rng.choice(lines)}\n\n"
                          for _ in range(repeats))


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A GRU trained on the play for a few seconds, with its text and checkpoint."""
    folder = tmp_path_factory.mktemp("raw")
    text = play_text()
    (folder / "play.txt").write_text(text)
    config = TrainConfig(corpus=str(folder / "play.txt"), level="char", cell="gru",
                         hidden=48, batch_size=8, seq_len=32, steps=120, eval_every=40,
                         checkpoint=str(folder / "play.npz"), samples=2, quiet=True,
                         device="cpu", checkpoint_every=0)
    result = Trainer(config).run()
    return folder, text, config, result


# ------------------------------------------------------------------------------------ reading

def test_char_text_is_the_file_as_it_is(tmp_path):
    (tmp_path / "play.txt").write_text(PLAY, newline="")
    assert D.load_text(tmp_path / "play.txt") == PLAY
    (tmp_path / "dos.txt").write_bytes(b"a\r\nb\r\n")  # nothing normalised: \r is kept
    assert D.load_text(tmp_path / "dos.txt") == "a\r\nb\r\n"


def test_documents_join_each_on_its_own_line(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.txt").write_text("one")         # no final newline: one is added
    (tmp_path / "d" / "2.txt").write_text("two\n")
    (tmp_path / "d" / "3.txt").write_text("three")       # the last: kept as it is
    assert D.load_text(tmp_path / "d") == "one\ntwo\nthree"
    (tmp_path / "c.csv").write_text('body\n"line 1\nline 2"\nsecond\n')
    assert D.load_text(tmp_path / "c.csv") == "line 1\nline 2\nsecond"


def test_byte_text_is_any_file(tmp_path):
    data = bytes(range(256)) * 3 + "naïve\n".encode()
    (tmp_path / "blob.bin").write_bytes(data)
    text = D.load_text(tmp_path / "blob.bin", level="byte")
    assert len(text) == len(data) and text.encode("latin-1") == data
    vocab = D.Vocabulary.for_text(text, level="byte")
    assert len(vocab) == 256 and vocab.unknown_id is None
    assert vocab.encode(text).tolist() == list(data)
    # a char corpus refuses the NUL bytes, naming the file
    with pytest.raises(ValueError, match=r"blob\.bin.*binary"):
        D.load_text(tmp_path / "blob.bin", level="char")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        D.load_text(tmp_path / "empty.txt", level="byte")


def test_byte_text_decodes_back_to_the_characters():
    text = "naïve ∑\n".encode().decode("latin-1")
    assert D.text_from_tokens(list(text), level="byte") == "naïve ∑\n"
    assert D.text_from_tokens(list(text[:-2]), level="byte") == "naïve \ufffd"  # cut ∑


def test_split_holds_out_the_last_stretch():
    train, valid = D.split_text("abcdefghij", 0.3)
    assert (train, valid) == ("abcdefg", "hij")
    with pytest.raises(ValueError, match="at least 2"):
        D.split_text("ab", 0.9)


def test_vocabulary_layouts_round_trip():
    char = D.Vocabulary.for_text("aab\n", size=10)
    assert char.to_list() == [D.UNKNOWN_TOKEN, "a", "\n", "b"] and char.unknown_id == 0
    assert char.encode("ba?").tolist() == [3, 1, 0]
    for vocab in (char, D.Vocabulary.of_bytes(), D.Vocabulary.build([["w"]], 10)):
        again = D.Vocabulary.from_list(vocab.to_list())
        assert again == vocab and again.specials == vocab.specials
    with pytest.raises(ValueError, match="U\\+0000-U\\+00FF"):
        D.Vocabulary.of_bytes().encode("∑")
    with pytest.raises(ValueError, match="256 byte values"):
        D.Vocabulary.from_list(["a", "b"])


# ------------------------------------------------------------------------------------- corpus

def test_char_corpus_streams_the_text_and_holds_out_its_end(tmp_path):
    text = play_text(40)
    (tmp_path / "play.txt").write_text(text)
    data = load_data(TrainConfig(corpus=str(tmp_path / "play.txt"), level="char",
                                 batch_size=4, seq_len=16))
    assert "\n" in data.vocab and data.carry_state
    train_t, valid_t = D.split_text(text, 0.1)
    assert data.train_tokens == len(train_t)
    # the validation rows, read back in order, are the held-out stretch (bar the rows'
    # equal-length tail), every target weighing 1: a loss per character of the raw text
    rows = numpy.concatenate([inputs for inputs, _, _ in data.valid], axis=1)
    targets = numpy.concatenate([t for _, t, _ in data.valid], axis=1)
    read = "".join(data.vocab.decode(numpy.concatenate([rows[:, :1], targets], axis=1)
                                     [:, 1:].reshape(-1)))
    assert valid_t[1:].startswith(read) and len(valid_t) - 1 - len(read) < len(rows)
    assert all((w == 1).all() for _, _, w in data.valid)
    # a sample starts at the beginning of a line
    assert data.vocab.decode(data.warmup[-1:]) == ["\n"] and len(data.warmup) >= WARMUP_LENGTH


def test_a_small_vocabulary_says_what_it_merges(tmp_path):
    (tmp_path / "t.txt").write_text("aaaa bbb cc d\n" * 10)
    with pytest.warns(D.CorpusWarning, match=r"6 distinct characters; the 2 rarest .*"
                                             r"UNKNOWN_TOKEN.*raise it to 7"):
        data = load_data(TrainConfig(corpus=str(tmp_path / "t.txt"), level="char",
                                     vocab_size=5, batch_size=2, seq_len=4))
    assert len(data.vocab) == 5 and data.vocab.to_list()[1:] == ["a", " ", "b", "c"]


def test_raw_levels_refuse_sentence_mode():
    with pytest.raises(ValueError, match="--level char-sentences"):
        TrainConfig(level="char", mode="sentence")


def test_builtin_text_keeps_the_documentation_layout():
    text = D.load_builtin_text()
    assert "\n\n" in text and "\n   " in text and len(text) > 100_000
    assert D.load_builtin_text(level="byte") == text.encode().decode("latin-1")


# ----------------------------------------------------------------------------------- training

def test_a_char_model_writes_newlines(char_run):
    folder, text, config, result = char_run
    lm = load_language_model(folder / "play.npz")
    assert lm.level == "char" and "\n" in lm.vocab.to_list()
    assert all("\n" in s for s in result.samples), result.samples
    samples = sample(lm.model, lm.vocab, level="char", num=3, length=200, seed=1,
                     warmup=lm.warmup, temperature=0.5)
    assert all(len(s) == 200 for s in samples)
    # it learnt the layout: after a line ending with ':' comes an indented line
    speakers = [line for s in samples for line in s.split("\n")[:-1] if line.endswith(":")]
    assert speakers
    follows = [s.split(line + "\n", 1)[1][:4] for s in samples for line in speakers
               if line + "\n" in s and len(s.split(line + "\n", 1)[1]) >= 4]
    assert sum(f == "    " for f in follows) >= 0.8 * len(follows) > 0


def test_the_validation_loss_is_per_character_of_the_held_out_text(char_run, tmp_path):
    folder, text, config, result = char_run
    (tmp_path / "held-out.txt").write_text(D.split_text(text, config.valid_fraction)[1])
    scored = evaluate_file(folder / "play.npz", tmp_path / "held-out.txt")
    assert scored.loss == pytest.approx(result.valid_history[-1][1], rel=1e-12)
    assert scored.unit == "char" and scored.bits == pytest.approx(scored.loss / numpy.log(2))
    # every character of the stretch is predicted but the first and the rows' tail
    assert len(D.split_text(text, 0.1)[1]) - 32 <= scored.tokens < len(D.split_text(text,
                                                                                  0.1)[1])
    records = [json.loads(line) for line in (folder / "play.jsonl").read_text().splitlines()]
    evals = [r for r in records if "valid_loss" in r]
    assert evals[-1]["valid_bits_per_char"] == pytest.approx(evals[-1]["valid_loss"]
                                                             / numpy.log(2))


def test_evaluate_from_the_command_line(char_run, tmp_path, capsys):
    folder, text, _, _ = char_run
    (tmp_path / "other.txt").write_text("All:\n    Speak, speak.\n\nZed:\n")
    assert cli.main(["evaluate", str(folder / "play.npz"), str(tmp_path / "other.txt"),
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unit"] == "char" and out["unknown"] == 1 and out["bits"] > 0  # 'Z'
    assert cli.main(["evaluate", str(folder / "play.npz"), str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.txt does not exist" in err


def test_generate_prints_each_sample_under_a_rule(char_run, capsys):
    folder = char_run[0]
    assert cli.main(["generate", str(folder / "play.npz"), "--num", "2", "--length", "60",
                     "--seed", "0", "--prompt", "All:\n"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("----- sample 1 of 2 -----\nAll:\n")
    assert "----- sample 2 of 2 -----\nAll:\n" in out and out.endswith("----- end -----\n")
    assert cli.main(["generate", str(folder / "play.npz"), "--max-length", "9"]) == 2
    assert "--max-length is for sentence models" in capsys.readouterr().err


def test_raw_sampling_arguments(char_run):
    lm = load_language_model(char_run[0] / "play.npz")
    with pytest.warns(UnknownWordWarning, match="'Z'"):
        text, = sample(lm.model, lm.vocab, level="char", prompt="Zed", length=5, seed=0)
    assert text.startswith("Zed") and len(text) == 8
    with pytest.raises(ValueError, match="max_length is for sentence models"):
        sample(lm.model, lm.vocab, level="char", max_length=5)
    # UNKNOWN_TOKEN is never drawn unless asked for, and then shown as U+FFFD
    drawn = sample(lm.model, lm.vocab, level="char", num=4, length=100, seed=0,
                   temperature=50.0)
    assert all("\ufffd" not in s and D.UNKNOWN_TOKEN not in s for s in drawn)
    with pytest.warns(UnknownWordWarning):
        shown = sample(lm.model, lm.vocab, level="char", num=4, length=100, seed=0,
                       temperature=50.0, show_unknown=True, prompt="Z")
    assert all(s.startswith("\ufffd") for s in shown)


def test_a_byte_model_trains_on_a_binary_file(tmp_path):
    rng = numpy.random.default_rng(1)
    blob = b"".join(bytes(rng.integers(0, 256, 8, dtype=numpy.uint8)) + b"\x00\x00header\n"
                    for _ in range(300))
    (tmp_path / "blob.bin").write_bytes(blob)
    result = Trainer(TrainConfig(corpus=str(tmp_path / "blob.bin"), level="byte",
                                 hidden=32, batch_size=4, seq_len=16, steps=40,
                                 checkpoint=str(tmp_path / "b.npz"), samples=1, quiet=True,
                                 device="cpu", checkpoint_every=0)).run()
    lm = load_language_model(tmp_path / "b.npz")
    assert len(lm.vocab) == 256 and lm.vocab.unknown_id is None and lm.level == "byte"
    assert numpy.isfinite(result.valid_history[-1][1])
    scored = evaluate_file(tmp_path / "b.npz", tmp_path / "blob.bin")
    assert scored.unknown == 0 and scored.unit == "byte"
    assert "ü" in sample(lm.model, lm.vocab, level="byte", prompt="ü", length=3, seed=0)[0]


def test_a_raw_run_resumes_exactly(tmp_path):
    (tmp_path / "play.txt").write_text(play_text(30))

    def run(name, steps, **kwargs):
        Trainer(TrainConfig(corpus=str(tmp_path / "play.txt"), level="char", hidden=16,
                            batch_size=4, seq_len=8, steps=steps, samples=0, quiet=True,
                            device="cpu", dtype="float64", checkpoint_every=0,
                            checkpoint=str(tmp_path / f"{name}.npz"), **kwargs)).run()
        return C.load_checkpoint(tmp_path / f"{name}.npz").params
    whole = run("whole", 30)
    run("parts", 13)
    parts = run("parts", 30, resume=True)
    assert all(numpy.array_equal(whole[k], parts[k]) for k in whole)


# ------------------------------------------------------------------------ older checkpoints

def test_an_older_char_checkpoint_loads_as_char_sentences(tmp_path, monkeypatch, capsys):
    """Format 2 called the sentence-split character level "char"; read as char-sentences."""
    sentences = D.tokenize("Hi there. Bye now.", level="char-sentences") * 20
    (tmp_path / "c.txt").write_text("Hi there. Bye now. " * 20)
    trained = Trainer(TrainConfig(corpus=str(tmp_path / "c.txt"), level="char-sentences",
                                  hidden=8, batch_size=2, seq_len=8, steps=3, samples=0,
                                  quiet=True, device="cpu",
                                  checkpoint=str(tmp_path / "new.npz")))
    trained.run()
    saved = C.load_checkpoint(tmp_path / "new.npz")
    config = {**saved.config, "train": {**saved.config["train"], "level": "char"}}
    monkeypatch.setattr(C, "FORMAT_VERSION", 2)
    C.save_checkpoint(tmp_path / "old.npz", params=saved.params,
                      optimizer_state=saved.optimizer_state, vocab=saved.vocab, config=config,
                      rng_state=saved.rng_state, step=saved.step, extra=saved.extra)
    monkeypatch.undo()
    old = load_language_model(tmp_path / "old.npz")
    assert (old.level, old.written_as) == ("char-sentences", "char")
    assert D.Vocabulary.build(sentences, 2000) == D.Vocabulary.from_list(saved.vocab)
    capsys.readouterr()
    assert cli.main(["generate", str(tmp_path / "old.npz"), "--num", "2", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    assert "--level char-sentences; written as --level char" in captured.err
    assert len(captured.out.splitlines()) == 2
    # resuming it keeps its mode: the checkpoint's settings say char-sentences now
    resumed = Trainer(TrainConfig(checkpoint=str(tmp_path / "old.npz"), resume=True,
                                  corpus=str(tmp_path / "c.txt"), steps=4, quiet=True,
                                  device="cpu", samples=0, **{
                                      k: v for k, v in saved.config["train"].items()
                                      if k in ("hidden", "batch_size", "seq_len")},
                                  level="char-sentences"))
    assert resumed.run().step == 4


def test_a_checkpoint_whose_vocabulary_does_not_fit_its_level_is_refused(char_run, tmp_path):
    saved = C.load_checkpoint(char_run[0] / "play.npz")
    config = {**saved.config, "train": {**saved.config["train"], "level": "byte"}}
    C.save_checkpoint(tmp_path / "x.npz", params=saved.params, optimizer_state={},
                      vocab=saved.vocab, config=config, rng_state=None, step=1, extra=None)
    with pytest.raises(C.CheckpointError, match="vocabulary does not start as a byte"):
        load_language_model(tmp_path / "x.npz")
