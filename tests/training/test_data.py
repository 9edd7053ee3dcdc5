"""Reading, tokenising, vocabulary and resumable batching (gpurnn.training.data)."""
import builtins
import itertools

import numpy
import pytest

from gpurnn.training import data
from gpurnn.training.data import (PAD_ID, SENTENCE_END_ID, SENTENCE_START_ID, UNKNOWN_ID, SentenceBatcher,
                         StreamBatcher, Vocabulary)


# ----------------------------------------------------------------------------------- tokenising

def test_word_tokens_keep_contractions_numbers_and_split_punctuation():
    assert data.tokenize_words("Don't panic, it's 3.14! Wait... (x.name) o’clock") == [
        "don't", "panic", ",", "it's", "3.14", "!", "wait", "...", "(", "x", ".", "name", ")",
        "o'clock"]
    assert data.tokenize_words("Hello World", lowercase=False) == ["Hello", "World"]


def test_sentence_splitting():
    text = "Hello there. This is e.g. a test!  Is it?\nYes, it\nis.\n\n1. A list item. \"Quoted.\" End"
    assert data.split_sentences(text) == [
        "Hello there.", "This is e.g. a test!", "Is it?", "Yes, it is.", "1. A list item.",
        "\"Quoted.\"", "End"]


def test_tokenize_word_and_char_levels():
    assert data.tokenize("Hi there. Bye!") == [["hi", "there", "."], ["bye", "!"]]
    # characters keep case by default; sentences are still split
    assert data.tokenize("Ab c. D", level="char-sentences") == [list("Ab c."), ["D"]]
    assert data.tokenize("Ab", level="char-sentences", lowercase=True) == [["a", "b"]]


def test_tokenize_rejects_bad_choices():
    with pytest.raises(ValueError, match="level"):
        data.tokenize("x", level="bytes")
    # the raw levels have no sentences: the message names what reads them
    with pytest.raises(ValueError, match=r"load_text\(path, level='char'\).*char-sentences"):
        data.tokenize("x", level="char")
    with pytest.raises(ValueError, match="tokenizer"):
        data.tokenize("x", tokenizer="spacy")


def test_nltk_missing_gives_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_nltk(name, *args, **kwargs):
        if name == "nltk":
            raise ImportError("No module named 'nltk'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nltk)
    with pytest.raises(ImportError, match="pip install nltk"):
        data.tokenize("Hello.", tokenizer="nltk")


def test_detokenize_drops_markers():
    tokens = ["SENTENCE_START", "a", "UNKNOWN_TOKEN", "SENTENCE_END", "PAD_TOKEN"]
    assert data.detokenize(tokens) == "a UNKNOWN_TOKEN"
    assert data.detokenize(["SENTENCE_START", "h", "i"], level="char-sentences") == "hi"


# -------------------------------------------------------------------------------------- reading

def test_read_file_folder_and_csv(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("Second file.", encoding="utf-8")
    (tmp_path / "1.txt").write_text("First file.", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not read", encoding="utf-8")
    assert data.read_documents(tmp_path) == ["First file.", "Second file."]
    csv_file = tmp_path / "c.csv"
    csv_file.write_text('id,body\n1,"Hello, world."\n2,Bye\n', encoding="utf-8")
    assert data.read_documents(csv_file) == ["Hello, world.", "Bye"]
    assert data.read_documents(csv_file, column="id") == ["1", "2"]
    assert data.load_corpus(csv_file) == [["hello", ",", "world", "."], ["bye"]]


def test_read_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.read_documents(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no .txt files"):
        data.read_documents(tmp_path)
    binary = tmp_path / "model.txt"
    binary.write_bytes(b"abc\x00\x01")
    with pytest.raises(ValueError, match=r"model\.txt.*binary.*offset 3"):
        data.read_documents(tmp_path)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.txt.*not valid UTF-8"):
        data.read_documents(latin)
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("title,text\nx,y\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no column 'body'.*'title', 'text'"):
        data.read_documents(csv_file)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ", encoding="utf-8")
    with pytest.raises(ValueError, match="no tokens"):
        data.load_corpus(empty)


def test_mostly_valid_utf8_is_read_with_a_warning_counting_the_repairs(tmp_path):
    path = tmp_path / "mostly.txt"
    path.write_bytes(("Plain words here. " * 100).encode() + b"caf\xe9 and \xff\xfe. " +
                     "A real \ufffd stays.".encode())
    with pytest.warns(data.CorpusWarning, match=r"mostly\.txt: 3 undecodable byte "
                      r"sequence\(s\) replaced by U\+FFFD \(the first byte 0xe9 at offset 1803\)"):
        text, = data.read_documents(path)
    assert text.count("\ufffd") == 4 and text.startswith("Plain words here.")


def test_text_mostly_not_utf8_is_refused_with_the_count(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("Le caf\u00e9 est tr\u00e8s bon. ".encode("latin-1") * 50)
    with pytest.raises(ValueError, match=r"latin\.txt: not valid UTF-8 \(100 undecodable "
                       r"sequences in 1100 characters, the first byte 0xe9 at offset 6\)"):
        data.read_documents(path)


def test_a_line_longer_than_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_LINE_BYTES", 1000)  # 10 MB in earnest
    path = tmp_path / "one-line.txt"
    path.write_text("short line\n" + "word " * 300 + "\nshort again\n")
    with pytest.raises(ValueError, match=r"one-line\.txt: 0\.0 MB without a line break "
                       r"\(from offset 11\); a text corpus breaks its lines at least every "
                       r"1,000 bytes"):
        data.read_documents(path)
    path.write_text(("word " * 150 + "\n") * 20)  # long text, short lines: fine
    assert len(data.read_documents(path)[0]) == 15020


def test_csv_fields_beyond_the_csv_modules_default_limit(tmp_path, monkeypatch):
    import csv
    path = tmp_path / "long.csv"
    path.write_text('id,body\n1,"' + "a" * 200_000 + '"\n2,short\n3,"' + "line\n" * 30_000 +
                    '"\n')
    before = csv.field_size_limit()
    assert [len(t) for t in data.read_documents(path)] == [200_000, 5, 150_000]  # > 131072
    assert csv.field_size_limit() == before  # and the module's limit is left as it was
    monkeypatch.setattr(data, "MAX_LINE_BYTES", 100_000)
    path.write_text('id,body\n1,"' + "a line\n" * 20_000 + '"\n')  # short lines, long field
    with pytest.raises(ValueError, match=r"long\.csv: line \d+: not readable as CSV \(field "
                       r"larger than field limit \(100000\); the limit is 100000 characters\) "
                       r"\(an unclosed quote\?\)"):
        data.read_documents(path)
    assert csv.field_size_limit() == before


def test_a_symlink_loop_is_named(tmp_path):
    (tmp_path / "a.txt").symlink_to(tmp_path / "b.txt")
    (tmp_path / "b.txt").symlink_to(tmp_path / "a.txt")
    with pytest.raises(FileNotFoundError, match=r"a\.txt is a symbolic link to nothing \(its "
                       r"target is missing, or the links form a loop\)"):
        data.read_documents(tmp_path / "a.txt")
    (tmp_path / "real.txt").write_text("Some text.")
    assert data.read_documents(tmp_path) == ["Some text."]  # the loop is skipped in a folder


def test_builtin_corpus_is_large_enough():
    sentences = data.load_builtin_corpus()
    assert sum(map(len, sentences)) > 50_000
    assert sentences == data.load_builtin_corpus()  # deterministic


# ----------------------------------------------------------------------------------- vocabulary

def test_vocabulary_orders_by_frequency_then_token():
    sentences = [["b", "a", "c"], ["c", "b", "d"], ["c"]]
    vocab = Vocabulary.build(sentences, size=7)
    assert vocab.to_list() == ["PAD_TOKEN", "UNKNOWN_TOKEN", "SENTENCE_START", "SENTENCE_END",
                               "c", "b", "a"]  # c:3, b:2, then a and d tie: 'a' < 'd'
    assert (PAD_ID, UNKNOWN_ID, SENTENCE_START_ID, SENTENCE_END_ID) == (0, 1, 2, 3)
    assert vocab.encode(["c", "d", "zzz"]).tolist() == [4, UNKNOWN_ID, UNKNOWN_ID]
    assert vocab.encode([]).dtype == data.ID_DTYPE
    assert vocab.decode(numpy.array([4, 5, 1])) == ["c", "b", "UNKNOWN_TOKEN"]
    assert len(vocab) == 7 and "a" in vocab and "d" not in vocab
    assert Vocabulary.from_list(vocab.to_list()) == vocab
    assert len(Vocabulary.build(sentences, size=100)) == 8  # only as many as the corpus has


def test_vocabulary_errors():
    with pytest.raises(ValueError, match="at least 4"):
        Vocabulary.build([["a"]], size=3)
    with pytest.raises(ValueError, match="special tokens"):
        Vocabulary.from_list(["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        Vocabulary.from_list(list(data.SPECIAL_TOKENS) + ["a", "a"])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        Vocabulary.from_list(data.SPECIAL_TOKENS).decode([4])


def test_encode_sentences_and_split():
    vocab = Vocabulary.build([["a", "b"]], size=10)
    encoded = data.encode_sentences([["a", "b"], ["b"]], vocab)
    assert [s.tolist() for s in encoded] == [[2, 4, 5, 3], [2, 5, 3]]
    items = list(range(20))
    train, valid = data.train_valid_split(items, 0.25, seed=3)
    assert len(valid) == 5 and sorted(train + valid) == items and train == sorted(train)
    assert (train, valid) == data.train_valid_split(items, 0.25, seed=3)
    with pytest.warns(UserWarning, match="validation set is empty"):
        assert data.train_valid_split([1, 2], 0.1)[1] == []
    with pytest.raises(ValueError, match="valid_fraction"):
        data.train_valid_split(items, 1.0)


# ------------------------------------------------------------------------------------- batching

def _sequences(count=23, seed=0):
    rng = numpy.random.default_rng(seed)
    return [numpy.concatenate([[SENTENCE_START_ID], rng.integers(4, 50, rng.integers(0, 12)),
                               [SENTENCE_END_ID]]).astype(data.ID_DTYPE) for _ in range(count)]


def test_sentence_batches_pad_and_mask():
    sequences = _sequences()
    batcher = SentenceBatcher(sequences, batch_size=4, max_len=8, seed=1, pool=2)
    batches = list(batcher)
    assert len(batches) == len(batcher) == 6 and [b.index for b in batches] == list(range(6))
    seen = []
    for batch in batches:
        assert batch.inputs.shape == batch.targets.shape == batch.mask.shape
        assert batch.inputs.dtype == data.ID_DTYPE and batch.mask.dtype == numpy.float32
        assert batch.inputs.shape[1] <= 8
        for row in range(batch.inputs.shape[0]):
            n = int(batch.mask[row].sum())
            assert set(batch.mask[row, :n]) == {1.0} and not batch.mask[row, n:].any()
            assert (batch.inputs[row, n:] == PAD_ID).all() and (batch.targets[row, n:] == PAD_ID).all()
            assert batch.inputs[row, 0] == SENTENCE_START_ID
            # find the source sentence: targets are the inputs shifted by one
            match = [i for i, s in enumerate(sequences)
                     if len(s) - 1 >= n and (s[:n] == batch.inputs[row, :n]).all()
                     and (s[1:n + 1] == batch.targets[row, :n]).all() and min(len(s) - 1, 8) == n]
            assert match
            seen.append(n)
    assert sorted(seen) == sorted(min(len(s) - 1, 8) for s in sequences)
    # shuffled differently per epoch, the same for the same (seed, epoch)
    second = list(batcher)
    assert second[0].epoch == 1
    assert any(not numpy.array_equal(a.inputs, b.inputs) for a, b in zip(batches, second))
    again = list(SentenceBatcher(sequences, batch_size=4, max_len=8, seed=1, pool=2))
    assert all(numpy.array_equal(a.inputs, b.inputs) for a, b in zip(batches, again))


def test_sentence_batcher_without_shuffle_sorts_by_length():
    batches = list(SentenceBatcher(_sequences(), batch_size=5, shuffle=False))
    lengths = [int(n) for b in batches for n in b.mask.sum(axis=1)]
    assert lengths == sorted(lengths)


def test_sentence_batcher_accepts_generator_seed():
    a = SentenceBatcher(_sequences(), 4, seed=numpy.random.default_rng(7))
    b = SentenceBatcher(_sequences(), 4, seed=numpy.random.default_rng(7))
    assert a.seed == b.seed
    assert all(numpy.array_equal(x.inputs, y.inputs) for x, y in zip(a, b))


def test_resume_mid_epoch_yields_exactly_the_remaining_batches():
    sequences = _sequences(40)
    reference = SentenceBatcher(sequences, 3, seed=5)
    expected = list(itertools.islice(itertools.chain(reference, reference), 25))  # 2 epochs
    batcher = SentenceBatcher(sequences, 3, seed=5)
    list(batcher)  # epoch 0
    iterator = iter(batcher)
    for _ in range(4):
        next(iterator)
    state = batcher.state_dict()
    assert state == {"kind": "sentence", "seed": 5, "epoch": 1, "index": 4, "num_batches": 14}
    resumed = SentenceBatcher(sequences, 3, seed=999)  # the saved seed wins
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 10 and resumed.epoch == 2 and resumed.index == 0
    for got, want in zip(rest, expected[14 + 4:]):
        assert (got.epoch, got.index) == (want.epoch, want.index)
        for name in ("inputs", "targets", "mask"):
            assert numpy.array_equal(getattr(got, name), getattr(want, name))


def test_load_state_dict_rejects_mismatch():
    batcher = SentenceBatcher(_sequences(), 4)
    state = batcher.state_dict()
    with pytest.raises(ValueError, match="different data or batch size"):
        SentenceBatcher(_sequences(), 5).load_state_dict(state)
    with pytest.raises(ValueError, match="out of range"):
        batcher.load_state_dict({**state, "index": 99})
    with pytest.raises(ValueError, match="lacks"):
        batcher.load_state_dict({"epoch": 0})


def test_stream_chunks_continue_each_other():
    stream = numpy.arange(103, dtype=data.ID_DTYPE)
    batcher = StreamBatcher(stream, batch_size=4, seq_len=7)
    batches = list(batcher)
    per_row = (103 - 1) // 4
    assert len(batches) == len(batcher) == -(-per_row // 7)
    assert [b.inputs.shape for b in batches] == [(4, 7)] * 3 + [(4, 4)]
    for batch in batches:
        assert numpy.array_equal(batch.targets, batch.inputs + 1) and batch.mask.all()
    for before, after in zip(batches, batches[1:]):
        assert numpy.array_equal(before.targets[:, -1], after.inputs[:, 0])
    rows = numpy.concatenate([b.inputs for b in batches], axis=1)
    assert numpy.array_equal(rows, numpy.arange(4 * per_row).reshape(4, per_row))
    # resumable like the sentence batcher
    resumed = StreamBatcher(stream, 4, 7)
    resumed.load_state_dict({**batcher.state_dict(), "index": 2})
    assert [b.index for b in resumed] == [2, 3]


def test_stream_batcher_errors():
    with pytest.raises(ValueError, match="too short for batch_size=8"):
        StreamBatcher(numpy.arange(5), batch_size=8, seq_len=3)
    with pytest.raises(ValueError, match="seq_len"):
        StreamBatcher(numpy.arange(50), batch_size=2, seq_len=0)
    with pytest.raises(ValueError, match="1-D"):
        StreamBatcher(numpy.zeros((3, 3)), batch_size=1, seq_len=2)
