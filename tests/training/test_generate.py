"""Sampling from a trained language model (gpurnn.generate)."""
import numpy
import pytest

from gpurnn.training import data as D
from gpurnn.training.checkpoint import CheckpointError
from gpurnn.training.config import TrainConfig
import warnings

from gpurnn.training.corpus import WARMUP_LENGTH, load_data
from gpurnn.training.generate import (UnknownWordWarning, join_tokens, known_word_share,
                                      load_language_model, sample, warmup_ids)
from gpurnn.training.train import Trainer

WORDS = ["the", "cat", "a", "dog", "sees", "likes", "fish", "ball", "."]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A language model trained for a few steps on a tiny regular corpus."""
    folder = tmp_path_factory.mktemp("lm")
    rng = numpy.random.default_rng(0)
    text = " ".join(f"{rng.choice(['The cat', 'A dog'])} {rng.choice(['sees', 'likes'])} "
                    f"{rng.choice(['the fish', 'a ball'])}." for _ in range(200))
    (folder / "corpus.txt").write_text(text)
    Trainer(TrainConfig(corpus=str(folder / "corpus.txt"), vocab_size=50, hidden=12,
                        batch_size=4, seq_len=8, steps=60, lr=0.02, checkpoint_every=0,
                        checkpoint=str(folder / "lm.npz"), samples=0, quiet=True,
                        device="cpu")).run()
    return load_language_model(folder / "lm.npz")


def test_loaded_model_has_the_vocabulary_and_level(lm):
    assert set(WORDS) <= set(lm.vocab.to_list()) and lm.level == "word" and lm.step == 60
    assert lm.model.input_size == len(lm.vocab)


def test_samples_use_the_vocabulary_and_are_seedable(lm):
    first = sample(lm.model, lm.vocab, num=4, seed=3)
    assert first == sample(lm.model, lm.vocab, num=4, seed=3)
    assert len(first) == 4
    for sentence in first:
        assert set(sentence.replace(".", " .").split()) <= set(WORDS) | {"UNKNOWN_TOKEN"}
    rng = numpy.random.default_rng(3)
    assert sample(lm.model, lm.vocab, num=4, rng=rng) == first


def test_trained_model_mostly_ends_sentences_like_the_corpus(lm):
    sentences = sample(lm.model, lm.vocab, num=20, seed=0, temperature=0.5)
    assert sum(s.endswith(".") for s in sentences) >= 15


def test_top_k_1_is_greedy_and_the_prompt_comes_first(lm):
    greedy = sample(lm.model, lm.vocab, num=3, top_k=1, seed=0, prompt="The dog")
    assert greedy == sample(lm.model, lm.vocab, num=3, top_k=1, seed=99, prompt="The dog")
    assert len(set(greedy)) == 1 and greedy[0].startswith("the dog ")


def test_min_and_max_length(lm):
    for sentence in sample(lm.model, lm.vocab, num=10, seed=1, min_length=8, max_length=9):
        assert len(sentence.replace(".", " .").split()) in (8, 9)
    for sentence in sample(lm.model, lm.vocab, num=10, seed=1, max_length=2):
        assert len(sentence.replace(".", " .").split()) <= 2


def test_unknown_token_is_never_drawn_unless_asked(lm):
    # a hot temperature makes the rare UNKNOWN_TOKEN likely; by default it has probability 0
    hot = sample(lm.model, lm.vocab, num=30, seed=0, temperature=5.0, show_unknown=True)
    assert any("UNKNOWN_TOKEN" in s for s in hot)
    cold = sample(lm.model, lm.vocab, num=30, seed=0, temperature=5.0)
    assert not any("UNKNOWN_TOKEN" in s for s in cold)


def test_unknown_prompt_words_are_named_and_shown_as_typed(lm):
    with pytest.warns(UnknownWordWarning, match=r"'zebra', 'quietly'$") as caught:
        shown = sample(lm.model, lm.vocab, num=2, seed=0, prompt="The zebra quietly sees")
    assert len(caught) == 1
    assert all(s.startswith("the zebra quietly sees") for s in shown)
    with pytest.warns(UnknownWordWarning):
        raw = sample(lm.model, lm.vocab, num=2, seed=0, prompt="The zebra quietly sees",
                     show_unknown=True)
    assert all(s.startswith("the UNKNOWN_TOKEN UNKNOWN_TOKEN sees") for s in raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known words: no warning
        sample(lm.model, lm.vocab, num=1, seed=0, prompt="The dog")


def test_warmup_ids_are_the_last_whole_sentences():
    s, e = D.SENTENCE_START_ID, D.SENTENCE_END_ID
    stream = numpy.array([s, 7, 8, e, s, 9, e, s, 10, 11, 12, e])
    assert warmup_ids(stream, 6).tolist() == [s, 9, e, s, 10, 11, 12, e]
    assert warmup_ids(stream, 5).tolist() == [s, 10, 11, 12, e]
    assert warmup_ids(stream, 1).tolist() == [s, 10, 11, 12, e]
    assert warmup_ids(stream, 100).tolist() == stream.tolist()   # all there is


def test_stream_checkpoints_keep_their_warmup_text_and_sentence_ones_none(lm, tmp_path):
    assert lm.warmup[0] == D.SENTENCE_START_ID and lm.warmup[-1] == D.SENTENCE_END_ID
    assert len(lm.warmup) >= WARMUP_LENGTH
    (tmp_path / "c.txt").write_text("The cat sees the fish. A dog likes a ball. " * 20)
    Trainer(TrainConfig(corpus=str(tmp_path / "c.txt"), vocab_size=20, hidden=4, batch_size=2,
                        seq_len=6, steps=2, mode="sentence", checkpoint=str(tmp_path / "s.npz"),
                        samples=0, quiet=True, device="cpu")).run()
    assert load_language_model(tmp_path / "s.npz").warmup is None


def test_known_word_share():
    text = "The cat sat. A dog ran!"
    assert known_word_share(["the cat ran", "Dog zzz"], text) == 4 / 5
    assert known_word_share(["zzz cat", "Dog"], text, first_only=True) == 1 / 2
    assert numpy.isnan(known_word_share(["...", ""], text))


SUBJECTS = ["The cat", "A dog", "My friend", "Her brother", "The old man"]
VERBS = ["sees", "likes", "eats", "finds", "wants"]
OBJECTS = ["the fish", "a ball", "some bread", "green apples", "the paper"]


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    """A character model trained in stream mode on 300 short sentences (about a second)."""
    folder = tmp_path_factory.mktemp("char")
    rng = numpy.random.default_rng(0)
    text = " ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
                    for _ in range(300))
    (folder / "c.txt").write_text(text)
    Trainer(TrainConfig(corpus=str(folder / "c.txt"), level="char-sentences", hidden=32, batch_size=8,
                        seq_len=32, steps=150, lr=0.01, checkpoint=str(folder / "c.npz"),
                        samples=0, quiet=True, device="cpu", checkpoint_every=0)).run()
    return load_language_model(folder / "c.npz"), text


def test_char_samples_are_words_of_the_text_and_safer_when_colder(char_lm):
    lm, text = char_lm

    def share(temperature, **kwargs):
        samples = sample(lm.model, lm.vocab, num=60, level="char-sentences", temperature=temperature,
                         seed=0, **kwargs)
        return (known_word_share(samples, text),
                known_word_share(samples, text, first_only=True))
    warm_hot, warm_cold = share(1.0, warmup=lm.warmup), share(0.5, warmup=lm.warmup)
    assert warm_cold[0] >= 0.6 and warm_cold[0] >= warm_hot[0]
    # From the zero state, which stream training hardly ever shows the model, the first
    # word of a sample is often garbage; read after the training text, it is a word.
    cold_hot = share(1.0)
    assert warm_hot[1] >= cold_hot[1] + 0.15, (warm_hot, cold_hot)


def test_char_vocabulary_holds_every_character_of_the_corpus(tmp_path):
    # "Z" and "!" occur in one sentence only; whichever side of the split it falls on,
    # they get ids (the vocabulary is large enough)
    text = "ab ab ab. " * 30 + "Zap!"
    (tmp_path / "c.txt").write_text(text)
    for seed in range(4):
        data = load_data(TrainConfig(corpus=str(tmp_path / "c.txt"), level="char-sentences",
                                     seed=seed,
                                     batch_size=2, seq_len=4, valid_fraction=0.3))
        assert set(text) - {" "} <= set(data.vocab.to_list())


@pytest.mark.parametrize("kwargs, message", [
    (dict(num=0), "num must be a positive integer"),
    (dict(temperature=0.0), "temperature must be a positive number"),
    (dict(top_k=0), "top_k must be None or a positive integer"),
    (dict(min_length=-1), "min_length must be an integer >= 0"),
    (dict(level="bytes"), "level must be one of 'word', 'char', 'byte', 'char-sentences'"),
    (dict(length=10), "length is for char and byte models"),
])
def test_bad_arguments(lm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(lm.model, lm.vocab, **kwargs)


def test_a_vocabulary_of_special_tokens_only_still_ends(lm):
    from gpurnn import ElmanRNN
    vocab = D.Vocabulary(D.SPECIAL_TOKENS)
    model = ElmanRNN(4, 3, 4)
    assert sample(model, vocab, num=2, seed=0) == ["", ""]


def test_join_tokens():
    assert join_tokens(["SENTENCE_START", "hello", ",", "(", "world", ")", "!", "it", "'s",
                        "SENTENCE_END"]) == "hello, (world)! it's"
    assert join_tokens(list("hi there"), level="char-sentences") == "hi there"


def test_junk_and_foreign_checkpoints_are_rejected(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip file")
    with pytest.raises(CheckpointError, match="junk.npz: truncated or corrupt"):
        load_language_model(junk)
    from gpurnn.training.checkpoint import save_checkpoint
    other = save_checkpoint(tmp_path / "other.npz", params={"w": numpy.ones(2)},
                            optimizer_state={}, vocab=list(D.SPECIAL_TOKENS), config={},
                            rng_state=None, step=0)
    with pytest.raises(CheckpointError, match="other.npz: not a usable (language-)?model"):
        load_language_model(other)


@pytest.mark.parametrize("cell, layers", [("lstm", 1), ("gru", 2), ("elman", 2), ("mingru", 2),
                                         ("minlstm", 1), ("lru", 2), ("paragru", 2)])
def test_gated_and_stacked_models_train_and_generate(tmp_path, cell, layers):
    """The checkpoint rebuilds the cell it was trained with, and sampling carries its whole
    state (an LSTM's (h, c), every layer) from token to token."""
    from gpurnn.training.train import train
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log. " * 40, encoding="utf-8")
    train(corpus=str(corpus), cell=cell, layers=layers, hidden=8, steps=20, batch_size=4,
          seq_len=8, checkpoint=str(tmp_path / "m.npz"), quiet=True, samples=0)
    lm = load_language_model(tmp_path / "m.npz")
    assert type(lm.model).__name__ != "ElmanRNN" or (cell, layers) == ("elman", 1)
    first = sample(lm.model, lm.vocab, num=3, seed=5, max_length=12)
    assert first == sample(lm.model, lm.vocab, num=3, seed=5, max_length=12)
    tokens = {t for s in first for sentence in D.tokenize(s.replace("UNKNOWN_TOKEN", ""))
              for t in sentence}
    assert tokens and tokens <= set(lm.vocab.to_list())
