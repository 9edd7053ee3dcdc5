"""Corpora, tokens, vocabulary and batches for language models (all on the host, in NumPy).

The pipeline, as the trainer uses it::

    sentences = load_corpus("comments.csv")             # or load_builtin_corpus()
    train_s, valid_s = train_valid_split(sentences, 0.1, seed=0)
    vocab = Vocabulary.build(train_s, size=8000)        # validation words never leak in
    train = encode_sentences(train_s, vocab)            # [START, w1, …, wn, END] int64 arrays
    batches = SentenceBatcher(train, batch_size=32, seed=0)       # padded, masked, bucketed
    # or: StreamBatcher(numpy.concatenate(train), batch_size=32, seq_len=64)

As in the WildML tutorial every sentence becomes ``[SENTENCE_START] + tokens + [SENTENCE_END]``
and a training pair is X = sentence[:-1], y = sentence[1:].

Special token ids are fixed: ``PAD_ID = 0``, ``UNKNOWN_ID = 1``, ``SENTENCE_START_ID = 2``,
``SENTENCE_END_ID = 3``; ordinary tokens follow from id 4, most frequent first.

Raw text (levels ``char`` and ``byte``) has no sentences and no special tokens but the unknown
one: :func:`load_text` reads a file as it is, every character (or byte) kept, and the text is
one stream of ids for :class:`StreamBatcher`::

    text = load_text("book.txt", level="char")         # or load_builtin_text()
    train_t, valid_t = split_text(text, 0.1)             # the last 10% held out
    vocab = Vocabulary.for_text(text, level="char", size=200)  # UNKNOWN_TOKEN, then chars
    batches = StreamBatcher(vocab.encode(train_t), batch_size=32, seq_len=64)

A byte-level text is a ``str`` too: its bytes as the code points 0-255 (Latin-1), so one
:class:`Vocabulary` of 256 one-character tokens covers any file; :func:`text_from_tokens`
turns tokens back into readable text for either level.

Batchers are resumable: epoch e's order depends only on (seed, e), so the position
``(epoch, index)`` in :meth:`state_dict` is all a checkpoint needs to continue with exactly the
next batch.
"""
from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy

from ..engine.arrays.validation import check_size

__all__ = [
    "PAD_TOKEN", "UNKNOWN_TOKEN", "SENTENCE_START", "SENTENCE_END", "SPECIAL_TOKENS",
    "PAD_ID", "UNKNOWN_ID", "SENTENCE_START_ID", "SENTENCE_END_ID", "ID_DTYPE",
    "read_documents", "split_sentences", "tokenize_words", "tokenize", "detokenize",
    "load_corpus", "load_builtin_corpus", "Vocabulary", "encode_sentences",
    "train_valid_split", "Batch", "SentenceBatcher", "StreamBatcher", "CorpusWarning",
    "MAX_LINE_BYTES", "LEVELS", "RAW_LEVELS", "SENTENCE_LEVELS", "load_text",
    "load_builtin_text", "split_text", "text_from_tokens", "corpus_files", "MAX_CORPUS_BYTES",
]

PAD_TOKEN = "PAD_TOKEN"
UNKNOWN_TOKEN = "UNKNOWN_TOKEN"
SENTENCE_START = "SENTENCE_START"
SENTENCE_END = "SENTENCE_END"
SPECIAL_TOKENS = (PAD_TOKEN, UNKNOWN_TOKEN, SENTENCE_START, SENTENCE_END)
PAD_ID, UNKNOWN_ID, SENTENCE_START_ID, SENTENCE_END_ID = range(len(SPECIAL_TOKENS))
_SPECIAL_SET = frozenset(SPECIAL_TOKENS)
ID_DTYPE = numpy.int64  # what the model's input checks convert token ids to anyway

SENTENCE_LEVELS = ("word", "char-sentences")  # split into sentences, START/END around each
RAW_LEVELS = ("char", "byte")                 # the text as it is, one stream
LEVELS = SENTENCE_LEVELS[:1] + RAW_LEVELS + SENTENCE_LEVELS[1:]
_TOKENIZERS = ("regex", "nltk")


def _check_choice(name: str, value, choices) -> None:
    if name == "level" and value in RAW_LEVELS and choices == SENTENCE_LEVELS:
        raise ValueError(f"level {value!r} reads the text as it is, without sentences: use "
                         f"load_text(path, level={value!r}) (or level='char-sentences' for "
                         f"the characters of split sentences)")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ---------------------------------------------------------------------------------------- reading

# Limits on what a text corpus looks like; past them the file is refused in one line rather
# than tokenised for minutes (or until memory runs out).
MAX_LINE_BYTES = 10_000_000  # a line (or a CSV field) longer than this is not running text
MAX_INVALID_UTF8 = 0.01      # share of characters that may be undecodable, replaced by U+FFFD
MAX_CORPUS_BYTES = 1 << 30   # a larger corpus is refused unless a limit is given (--corpus-limit)


class CorpusWarning(UserWarning):
    """The corpus was read with a repair (undecodable bytes replaced)."""


def _read_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except OSError as error:
        raise ValueError(f"{file}: cannot be read ({error.strerror or error})") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or _looks_like_utf16(data):
        raise ValueError(f"{file}: is UTF-16 text, not UTF-8; convert it (e.g. iconv -f "
                         f"utf-16 -t utf-8), or read its bytes with --level byte")
    nul = data.find(b"\x00")
    if nul >= 0:  # UTF-8 text never contains NUL; binaries almost always do
        raise ValueError(f"{file}: looks like a binary file (NUL byte at offset {nul}); "
                         "expected UTF-8 text")
    _check_line_length(file, data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        first = f"byte 0x{data[error.start]:02x} at offset {error.start}"
    text = data.decode("utf-8-sig", errors="replace")
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())
    if replaced > MAX_INVALID_UTF8 * len(text):
        raise ValueError(f"{file}: not valid UTF-8 ({replaced} undecodable sequences in "
                         f"{len(text)} characters, the first {first}); expected UTF-8 text "
                         f"(convert it, e.g. iconv -f latin1 -t utf-8)")
    warnings.warn(f"{file}: {replaced} undecodable byte sequence(s) replaced by U+FFFD (the "
                  f"first {first}); the rest is valid UTF-8", CorpusWarning, stacklevel=3)
    return text


def _looks_like_utf16(data: bytes) -> bool:
    """UTF-16 without a byte-order mark: of mostly-ASCII text, every other byte is NUL."""
    head = data[:4096]
    if len(head) < 8:
        return False
    even, odd = head[0::2], head[1::2]
    return max(even.count(0) / len(even), odd.count(0) / len(odd)) > 0.3 and \
        min(even.count(0), odd.count(0)) < 0.05 * len(odd)


def _check_line_length(file: Path, data: bytes) -> None:
    breaks = numpy.flatnonzero((numpy.frombuffer(data, numpy.uint8) == 10)
                               | (numpy.frombuffer(data, numpy.uint8) == 13))
    bounds = numpy.concatenate(([-1], breaks, [len(data)]))
    gaps = numpy.diff(bounds) - 1
    longest = int(gaps.argmax())
    if gaps[longest] > MAX_LINE_BYTES:
        raise ValueError(f"{file}: {gaps[longest] / 1e6:.1f} MB without a line break (from "
                         f"offset {bounds[longest] + 1}); a text corpus breaks its lines at "
                         f"least every {MAX_LINE_BYTES:,} bytes")


def _read_csv_column(file: Path, column: str) -> list[str]:
    rows = csv.reader(io.StringIO(_read_text(file), newline=""))
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_LINE_BYTES)  # the default, 131072 characters, is too small
    try:
        header = next(rows, None)
        if not header:
            raise ValueError(f"{file}: CSV file is empty; expected a header row naming a "
                             f"{column!r} column")
        if column not in header:
            raise ValueError(f"{file}: CSV has no column {column!r}; its columns are: "
                             f"{', '.join(map(repr, header))}")
        index = header.index(column)
        return [row[index] for row in rows if len(row) > index]
    except csv.Error as error:
        hint = " (an unclosed quote?)" if "field larger" in str(error) else ""
        raise ValueError(f"{file}: line {rows.line_num}: not readable as CSV ({error}; the "
                         f"limit is {MAX_LINE_BYTES} characters){hint}") from None
    finally:
        csv.field_size_limit(limit)


def corpus_files(path, *, max_bytes: int | None = None) -> list[Path]:
    """The files a corpus path names: itself, or every ``*.txt`` regular file below a folder
    (sorted), after checking that each is a regular file and that together they hold at most
    ``max_bytes`` (None: ``MAX_CORPUS_BYTES``; 0: no limit).

    Raises:
        FileNotFoundError: ``path`` does not exist (or is a link to nothing), or a folder
            holds no ``.txt`` file.
        ValueError: a device, FIFO or socket (``/dev/zero`` would be read forever, a FIFO
            without a writer blocks), or a corpus over the limit.
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise FileNotFoundError(f"corpus path {path} is a symbolic link to nothing (its "
                                    f"target is missing, or the links form a loop)")
        raise FileNotFoundError(f"corpus path {path} does not exist")
    if path.is_dir():
        # is_file() leaves out FIFOs, devices and links to them
        files = sorted(file for file in path.rglob("*.txt") if file.is_file())
        if not files:
            raise FileNotFoundError(f"corpus folder {path} contains no .txt files")
    elif not path.is_file():
        raise ValueError(f"corpus path {path} is not a regular file (a device, FIFO or "
                         f"socket); give a text file or a folder of them")
    else:
        files = [path]
    limit = MAX_CORPUS_BYTES if max_bytes is None else max_bytes
    total = sum(file.stat().st_size for file in files)
    if limit and total > limit:
        raise ValueError(f"corpus {path} holds {total:,} bytes, more than the limit of "
                         f"{limit:,} (--corpus-limit raises it)")
    return files


def read_documents(path, *, column: str = "body", max_bytes: int | None = None) -> list[str]:
    """Read raw texts: one per ``.txt`` file, or one per CSV row.

    Args:
        path: a UTF-8 text file; a folder (every ``*.txt`` below it, recursively, in sorted
            path order); or a ``.csv`` file with a header row.
        column: the CSV column holding the text (``body`` in the tutorial's Reddit comments).
        max_bytes: refuse a corpus larger than this (see :func:`corpus_files`).
    Raises:
        FileNotFoundError, ValueError: as :func:`corpus_files`; and a binary, UTF-16 or
            mostly non-UTF-8 file (named), a line or CSV field over ``MAX_LINE_BYTES``, or a
            CSV without ``column``.
    Warns:
        CorpusWarning: a file with a few undecodable bytes (at most ``MAX_INVALID_UTF8`` of
            its characters), read with those replaced by U+FFFD; the count is in the message.
    """
    files = corpus_files(path, max_bytes=max_bytes)
    if Path(path).is_dir():
        return [_read_text(file) for file in files]
    if files[0].suffix.lower() == ".csv":
        return _read_csv_column(files[0], column)
    return [_read_text(files[0])]


# ------------------------------------------------------------------------------------ tokenising

# A sentence ends at . ! or ? (possibly repeated, possibly inside closing quotes/brackets)
# followed by whitespace; "x.name", "3.14" and "e.g. this" are not ends.
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)")
_ABBREVIATIONS = frozenset({"e.g", "i.e", "cf", "vs", "mr", "mrs", "ms", "dr", "prof", "st"})
_PARAGRAPH_RE = re.compile(r"\n[ \t\r\f\v]*\n")
_WORD_RE = re.compile(r"""
      \d+(?:[.,]\d+)+             # numbers with separators: 3.14, 1,000
    | \w+(?:'\w+)*                # words and numbers, contractions whole: don't, it's, o'clock
    | ([^\w\s])\1*                # any other character, runs kept together: , ( ... !!
""", re.VERBOSE)


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with regexes (no NLTK).

    Blank lines end paragraphs; inside a paragraph a sentence ends at ``.``, ``!`` or ``?``
    followed by whitespace, except after a few abbreviations (e.g., i.e., Mr., …) and list
    markers ("1.", "a."). Whitespace
    runs, newlines included, become single spaces.
    """
    sentences = []
    for paragraph in _PARAGRAPH_RE.split(text):
        paragraph = " ".join(paragraph.split())
        start = 0
        for match in _SENTENCE_END_RE.finditer(paragraph):
            words = paragraph[start:match.start()].split(" ")
            last = words[-1].lstrip("(\"'[").lower()
            # "e.g. this" and list numbers "1. First" do not end a sentence
            if match.group() == "." and (last in _ABBREVIATIONS or (len(words) == 1 and (
                    last.isdigit() or len(last) == 1))):
                continue
            sentences.append(paragraph[start:match.end()])
            start = match.end() + 1
        sentences.append(paragraph[start:])
    return [sentence for sentence in sentences if sentence]


def tokenize_words(sentence: str, *, lowercase: bool = True) -> list[str]:
    """Words, numbers and punctuation of one sentence (no NLTK).

    Contractions and possessives stay whole (``don't``, ``it's``); every other visible
    character is its own token, with runs kept together (``...``).
    Example: ``"Don't panic, it's 3.14!"`` -> ``["don't", "panic", ",", "it's", "3.14", "!"]``.
    """
    sentence = sentence.replace("\u2019", "'")  # curly apostrophe: "don’t" is "don't"
    if lowercase:
        sentence = sentence.lower()
    return [match.group() for match in _WORD_RE.finditer(sentence)]


def _nltk():
    try:
        import nltk
    except ImportError as error:
        raise ImportError("tokenizer='nltk' needs the nltk package (pip install nltk); "
                          "tokenizer='regex' needs nothing") from error
    return nltk


def tokenize(text: str, *, level: str = "word", lowercase: bool | None = None,
             tokenizer: str = "regex") -> list[list[str]]:
    """Split text into sentences of tokens.

    Args:
        text: the raw text.
        level: ``"word"`` (words, numbers, punctuation) or ``"char-sentences"`` (each
            character of the sentence, spaces included; sentences are still split, so
            SENTENCE_START/END mark sentence boundaries in both modes). The raw levels
            ``"char"`` and ``"byte"`` have no sentences: see :func:`load_text`.
        lowercase: lower-case the text; None means True for words and False for characters.
        tokenizer: ``"regex"`` (built in) or ``"nltk"`` (``sent_tokenize``/``word_tokenize``;
            only if installed with its ``punkt`` data).
    Returns:
        One list of tokens per non-empty sentence.
    """
    _check_choice("level", level, SENTENCE_LEVELS)
    _check_choice("tokenizer", tokenizer, _TOKENIZERS)
    if lowercase is None:
        lowercase = level == "word"
    if tokenizer == "nltk":
        nltk = _nltk()
        try:
            sentences = [" ".join(s.split()) for p in _PARAGRAPH_RE.split(text)
                         for s in nltk.sent_tokenize(p)]
        except LookupError as error:
            raise LookupError("tokenizer='nltk' needs NLTK's punkt data: run "
                              "python -m nltk.downloader punkt punkt_tab") from error
    else:
        sentences = split_sentences(text)
    if level == "char-sentences":
        return [list(s.lower() if lowercase else s) for s in sentences if s]
    if tokenizer == "nltk":
        tokenized = [nltk.word_tokenize(s.lower() if lowercase else s) for s in sentences]
    else:
        tokenized = [tokenize_words(s, lowercase=lowercase) for s in sentences]
    return [tokens for tokens in tokenized if tokens]


def detokenize(tokens: Iterable[str], *, level: str = "word") -> str:
    """Join tokens into text, dropping the special tokens: spaces between words, none between
    characters."""
    _check_choice("level", level, SENTENCE_LEVELS)
    kept = [token for token in tokens if token not in _SPECIAL_SET or token == UNKNOWN_TOKEN]
    return ("" if level == "char-sentences" else " ").join(kept)


def load_corpus(path, *, level: str = "word", lowercase: bool | None = None,
                tokenizer: str = "regex", column: str = "body",
                max_bytes: int | None = None) -> list[list[str]]:
    """Read and tokenise a corpus (see :func:`read_documents` and :func:`tokenize`).

    Raises:
        ValueError: the corpus holds no tokens (besides the errors of :func:`read_documents`).
    """
    sentences = [tokens for document in read_documents(path, column=column,
                                                       max_bytes=max_bytes)
                 for tokens in tokenize(document, level=level, lowercase=lowercase,
                                        tokenizer=tokenizer)]
    if not sentences:
        raise ValueError(f"corpus {path} contains no tokens")
    return sentences


def load_builtin_corpus(*, level: str = "word", lowercase: bool | None = None) -> list[list[str]]:
    """A corpus that is on every machine offline: Python's own reference documentation.

    The text is ``pydoc_data.topics.topics``, shipped with CPython for ``help()`` (about
    0.5-0.7 MB of English prose and code examples, roughly 100k words; PSF licence). Topics
    are read in sorted order so the corpus is deterministic for a given Python version.
    Tokenised with the regex tokenizer; see :func:`tokenize` for ``level`` and ``lowercase``.

    Raises:
        FileNotFoundError: this Python installation lacks ``pydoc_data`` (some distributions
            split it out); pass a corpus path instead.
    """
    return [tokens for document in _builtin_documents()
            for tokens in tokenize(document, level=level, lowercase=lowercase)]


def _builtin_documents() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError as error:
        raise FileNotFoundError("the built-in corpus needs the standard library module "
                                "pydoc_data.topics, which this Python installation lacks; "
                                "give a corpus path instead") from error
    return [topics[key] for key in sorted(topics)]


# -------------------------------------------------------------------------------------- raw text

def _join_documents(documents: Sequence[str]) -> str:
    """One text: every document but the last ends with a newline (added where it lacks one),
    so that no two documents run together on one line."""
    return "".join(d if d.endswith("\n") else d + "\n" for d in documents[:-1]) + documents[-1]


def _as_byte_text(data: bytes) -> str:
    return data.decode("latin-1")  # byte b is the character chr(b): a lossless view


def load_text(path, *, level: str = "char", column: str = "body",
              max_bytes: int | None = None) -> str:
    """A corpus as one text, every character kept: newlines, case, spacing, layout.

    Args:
        path: as in :func:`read_documents` (a text file, a folder of ``.txt`` files, a
            ``.csv`` column); documents are joined in order, each ending with a newline.
        level: ``"char"``: the UTF-8 text (checked as :func:`read_documents` does);
            ``"byte"``: the bytes of a file as they are (any file, binary too; a CSV
            column's or a folder's texts encoded as UTF-8), as a ``str`` of the code points
            0-255, one character per byte.
        max_bytes: refuse a corpus larger than this (see :func:`corpus_files`).
    Raises:
        FileNotFoundError, ValueError: as :func:`read_documents`; and an empty text.
    """
    _check_choice("level", level, RAW_LEVELS)
    path = Path(path)
    files = corpus_files(path, max_bytes=max_bytes)
    if level == "byte" and not path.is_dir() and path.suffix.lower() != ".csv":
        try:
            return _nonempty(_as_byte_text(files[0].read_bytes()), path)
        except OSError as error:
            raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None
    text = _join_documents(read_documents(path, column=column, max_bytes=max_bytes))
    return _nonempty(_as_byte_text(text.encode("utf-8")) if level == "byte" else text, path)


def _nonempty(text: str, path) -> str:
    if not text:
        raise ValueError(f"corpus {path} is empty: there is no text to learn from")
    return text


def load_builtin_text(*, level: str = "char") -> str:
    """The built-in corpus (see :func:`load_builtin_corpus`) as one raw text, every
    character kept: its documents in sorted order, each ending with a newline."""
    _check_choice("level", level, RAW_LEVELS)
    text = _join_documents(_builtin_documents())
    return _as_byte_text(text.encode("utf-8")) if level == "byte" else text


def split_text(text: str, valid_fraction: float = 0.1) -> tuple[str, str]:
    """(train, valid): the last ``round(len(text) * valid_fraction)`` characters are held
    out, one contiguous stretch, as char-rnn and nanoGPT split."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    cut = len(text) - round(len(text) * valid_fraction)
    if cut < 2:
        raise ValueError(f"valid_fraction={valid_fraction} leaves {cut} of the text's "
                         f"{len(text)} characters for training; at least 2 are needed")
    return text[:cut], text[cut:]


def text_from_tokens(tokens: Iterable[str], *, level: str = "char") -> str:
    """Readable text from raw-level tokens: characters joined as they are (UNKNOWN_TOKEN
    shown as U+FFFD), or bytes decoded as UTF-8 (invalid sequences shown as U+FFFD)."""
    _check_choice("level", level, RAW_LEVELS)
    text = "".join("\ufffd" if token == UNKNOWN_TOKEN else token for token in tokens)
    return text.encode("latin-1").decode("utf-8", errors="replace") if level == "byte" else text


# ------------------------------------------------------------------------------------ vocabulary


class Vocabulary:
    """Token <-> id mapping: the special tokens followed by ordinary tokens, most frequent
    first. Unknown tokens encode to the id of ``UNKNOWN_TOKEN``.

    Three layouts, told apart by their first tokens (``specials``):

    - sentence levels (word, char-sentences): the four special tokens, ids 0-3 (see the
      module docstring);
    - raw characters (level char): ``UNKNOWN_TOKEN`` alone at id 0, for the characters
      beyond the vocabulary's size and those a prompt may bring;
    - bytes (level byte): no special token, the 256 byte values, id = byte (:meth:`of_bytes`).

    Saved in checkpoints as :meth:`to_list` and rebuilt with :meth:`from_list`.
    """

    LAYOUTS = (SPECIAL_TOKENS, (UNKNOWN_TOKEN,), ())

    def __init__(self, tokens: Sequence[str], *, specials: Sequence[str] = SPECIAL_TOKENS):
        tokens, specials = list(tokens), tuple(specials)
        if specials not in self.LAYOUTS:
            raise ValueError(f"specials must be one of {[list(s) for s in self.LAYOUTS]}, "
                             f"got {list(specials)}")
        if tuple(tokens[:len(specials)]) != specials:
            raise ValueError(f"tokens must start with the special tokens {list(specials)}, "
                             f"got {tokens[:len(specials)]}")
        if not specials and tokens != _BYTE_TOKENS:
            raise ValueError("a vocabulary without special tokens is the byte vocabulary, "
                             "the 256 characters chr(0) ... chr(255) in order "
                             "(Vocabulary.of_bytes())")
        if not all(isinstance(token, str) for token in tokens):
            raise TypeError("tokens must all be strings")
        ordinary = set(tokens[len(specials):]) & _SPECIAL_SET
        if ordinary:
            raise ValueError(f"special tokens may only come first; found {sorted(ordinary)} "
                             f"among the ordinary tokens")
        self._tokens, self.specials = tokens, specials
        self._ids = {token: index for index, token in enumerate(tokens)}
        if len(self._ids) != len(tokens):
            repeated = sorted(t for t, n in Counter(tokens).items() if n > 1)
            raise ValueError(f"tokens must be unique; repeated: {repeated[:10]}")
        self.unknown_id = self._ids.get(UNKNOWN_TOKEN)  # None for bytes: nothing is unknown
        self._bytes = specials == () and tokens == _BYTE_TOKENS

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], size: int, *,
              specials: Sequence[str] = SPECIAL_TOKENS) -> "Vocabulary":
        """The ``size - len(specials)`` most frequent tokens of ``sentences`` after the
        special tokens.

        Ties are broken by the token's string order, so the result does not depend on the
        order of the sentences. The vocabulary is smaller when the corpus has fewer tokens.
        """
        if isinstance(size, bool) or not isinstance(size, (int, numpy.integer)):
            raise TypeError(f"size must be an integer, got {type(size).__name__}")
        specials = tuple(specials)
        if size < max(len(specials), 1):
            raise ValueError(f"size must be at least {max(len(specials), 1)}"
                             + (f" (the special tokens {', '.join(specials)})" if specials
                                else "") + f", got {size}")
        counts = Counter(token for sentence in sentences for token in sentence)
        ranked = sorted((t for t in counts if t not in _SPECIAL_SET), key=lambda t: (-counts[t], t))
        return cls(specials + tuple(ranked[:size - len(specials)]), specials=specials)

    @classmethod
    def for_text(cls, text: str, *, level: str = "char", size: int = 2000) -> "Vocabulary":
        """The vocabulary of a raw text: for ``"char"``, ``UNKNOWN_TOKEN`` then the text's
        characters, most frequent first, ``size`` in all (:meth:`build`); for ``"byte"``,
        :meth:`of_bytes` (``size`` is not used)."""
        _check_choice("level", level, RAW_LEVELS)
        if level == "byte":
            return cls.of_bytes()
        return cls.build([text], size, specials=(UNKNOWN_TOKEN,))

    @classmethod
    def of_bytes(cls) -> "Vocabulary":
        """The 256 byte values as one-character tokens ``chr(0)`` … ``chr(255)``, id = byte."""
        return cls(_BYTE_TOKENS, specials=())

    @classmethod
    def from_list(cls, tokens: Sequence[str]) -> "Vocabulary":
        """The inverse of :meth:`to_list`; the layout is read from the first tokens."""
        tokens = list(tokens)
        if tokens == _BYTE_TOKENS:
            return cls(tokens, specials=())
        specials = next((layout for layout in cls.LAYOUTS[:2]
                         if tuple(tokens[:len(layout)]) == layout), None)
        if specials is None:
            raise ValueError(f"tokens must start with the special tokens "
                             f"{list(SPECIAL_TOKENS)} (levels word, char-sentences) or with "
                             f"{UNKNOWN_TOKEN} (char), or be the 256 byte values (byte); "
                             f"got {tokens[:4]}")
        return cls(tokens, specials=specials)

    def to_list(self) -> list[str]:
        """All tokens in id order (JSON-able)."""
        return list(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token) -> bool:
        return token in self._ids

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def encode(self, tokens: Iterable[str]) -> numpy.ndarray:
        """Token ids, shape (n,), dtype ``ID_DTYPE``; unknown tokens map to ``unknown_id``.
        A raw text (a ``str``) is a sequence of one-character tokens.

        Raises:
            ValueError: a token outside a vocabulary without ``UNKNOWN_TOKEN`` (bytes:
                a character above U+00FF, which no byte view of a text holds).
        """
        if self._bytes and isinstance(tokens, str):
            try:
                return numpy.frombuffer(tokens.encode("latin-1"), numpy.uint8).astype(ID_DTYPE)
            except UnicodeEncodeError as error:
                raise ValueError(f"a byte-level text holds only the characters U+0000-U+00FF "
                                 f"(one per byte); got {tokens[error.start]!r} at "
                                 f"{error.start}") from None
        ids, unknown = self._ids, self.unknown_id
        if unknown is None:
            missing = next((t for t in tokens if t not in ids), None) \
                if not isinstance(tokens, str) else None
            if missing is not None:
                raise ValueError(f"token {missing!r} is not in this vocabulary, which has no "
                                 f"{UNKNOWN_TOKEN}")
        return numpy.fromiter((ids.get(token, unknown) for token in tokens), dtype=ID_DTYPE)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens for ids (any int sequence or array)."""
        size = len(self._tokens)
        tokens = []
        for index in numpy.asarray(ids).reshape(-1).tolist():
            if not 0 <= index < size:
                raise ValueError(f"ids must lie in [0, {size}), got {index}")
            tokens.append(self._tokens[index])
        return tokens


_BYTE_TOKENS = [chr(byte) for byte in range(256)]


def encode_sentences(sentences: Iterable[Sequence[str]], vocab: Vocabulary) -> list[numpy.ndarray]:
    """Each sentence as ids ``[SENTENCE_START_ID, …, SENTENCE_END_ID]``, shape (len + 2,)."""
    start, end = numpy.array([SENTENCE_START_ID], ID_DTYPE), numpy.array([SENTENCE_END_ID], ID_DTYPE)
    return [numpy.concatenate([start, vocab.encode(sentence), end]) for sentence in sentences]


def train_valid_split(items: Sequence, valid_fraction: float = 0.1, *,
                      seed: int = 0) -> tuple[list, list]:
    """Split sentences (token lists or id arrays) into (train, valid), deterministically.

    ``round(len(items) * valid_fraction)`` items, drawn by ``default_rng(seed)``, form the
    validation set; both parts keep the corpus order. A corpus too small for one validation
    sentence gives an empty validation set and a warning.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    n_valid = round(len(items) * valid_fraction)
    if n_valid == 0 and valid_fraction > 0:
        warnings.warn(f"corpus of {len(items)} sentences is too small for a validation set at "
                      f"valid_fraction={valid_fraction}; validation set is empty", stacklevel=2)
    is_valid = numpy.zeros(len(items), dtype=bool)
    is_valid[numpy.random.default_rng(seed).permutation(len(items))[:n_valid]] = True
    train = [item for item, v in zip(items, is_valid) if not v]
    if not train:
        raise ValueError(f"valid_fraction={valid_fraction} leaves no training sentences "
                         f"out of {len(items)}")
    return train, [item for item, v in zip(items, is_valid) if v]


# -------------------------------------------------------------------------------------- batching

@dataclass(frozen=True)
class Batch:
    """One batch on the host. ``inputs``/``targets`` are (batch, time) ``ID_DTYPE`` token ids
    with ``PAD_ID`` after a sequence ends; ``mask`` is (batch, time) float32, 1.0 on real steps
    and 0.0 on padding. ``index`` is the batch's number within ``epoch`` (0 starts an epoch:
    in stream mode, reset the carried hidden state there)."""

    inputs: numpy.ndarray
    targets: numpy.ndarray
    mask: numpy.ndarray
    epoch: int
    index: int


class _Batcher:
    """Resumable iteration: ``iter()`` yields the rest of the current epoch from the saved
    position, which always names the next batch to produce."""

    kind = ""

    def __init__(self, num_batches: int, seed: int | None):
        self.num_batches, self.seed = num_batches, seed
        self.epoch, self.index = 0, 0

    def __len__(self) -> int:
        return self.num_batches

    def _plan(self, epoch: int) -> list:  # what each batch of the epoch holds
        raise NotImplementedError

    def _make(self, item) -> tuple:  # (inputs, targets, mask) for one plan entry
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        epoch, plan = self.epoch, self._plan(self.epoch)
        for index in range(self.index, self.num_batches):
            # Advance before yielding: a state saved while batch `index` is in use resumes
            # at the batch after it.
            last = index + 1 == self.num_batches
            self.epoch, self.index = (epoch + 1, 0) if last else (epoch, index + 1)
            yield Batch(*self._make(plan[index]), epoch=epoch, index=index)

    def state_dict(self) -> dict:
        """The position of the next batch, JSON-able: kind, seed, epoch, index, num_batches."""
        return {"kind": self.kind, "seed": self.seed, "epoch": self.epoch, "index": self.index,
                "num_batches": self.num_batches}

    def load_state_dict(self, state: dict) -> None:
        """Resume at a position from :meth:`state_dict` (same data and batch size)."""
        missing = {"kind", "seed", "epoch", "index", "num_batches"} - set(state)
        if missing:
            raise ValueError(f"batcher state lacks {sorted(missing)}")
        if state["kind"] != self.kind or state["num_batches"] != self.num_batches:
            raise ValueError(f"batcher state is for a {state['kind']} batcher of "
                             f"{state['num_batches']} batches per epoch; this is a {self.kind} "
                             f"batcher of {self.num_batches} (different data or batch size?)")
        if not (0 <= state["index"] < self.num_batches and state["epoch"] >= 0):
            raise ValueError(f"batcher state position (epoch {state['epoch']}, index "
                             f"{state['index']}) is out of range")
        self.seed, self.epoch, self.index = state["seed"], state["epoch"], state["index"]


class SentenceBatcher(_Batcher):
    """Padded, masked batches of whole sentences, bucketed by length.

    Each epoch, sentences are shuffled by ``default_rng([seed, epoch])``; every pool of
    ``pool * batch_size`` of them is sorted by length and cut into batches (so batches hold
    sentences of similar length and little padding), and the batch order is shuffled. With
    ``shuffle=False`` (evaluation) all sentences are sorted by length once, the same every epoch.

    Args:
        sequences: id arrays ``[START, …, END]`` from :func:`encode_sentences`, each of length
            >= 2; a sentence of n+1 ids gives n steps (X = s[:-1], y = s[1:]).
        batch_size: sentences per batch (the last batch of an epoch may be smaller).
        max_len: cut longer sentences to their first ``max_len`` steps; None keeps all.
        shuffle: shuffle as above, else deterministic length order.
        seed: an int, or a ``numpy.random.Generator`` from which one int seed is drawn now.
        pool: batches per sorting pool; larger pools pad less but shuffle less.
    Yields:
        :class:`Batch` with inputs/targets/mask of shape (B, T), T the longest in the batch.
    """

    kind = "sentence"

    def __init__(self, sequences: Sequence[numpy.ndarray], batch_size: int, *,
                 max_len: int | None = None, shuffle: bool = True,
                 seed: "int | numpy.random.Generator" = 0, pool: int = 50):
        self.batch_size = check_size(batch_size, "batch_size")
        self.pool = check_size(pool, "pool")
        if max_len is not None:
            max_len = check_size(max_len, "max_len")
        if isinstance(seed, numpy.random.Generator):
            seed = int(seed.integers(2**63))
        if isinstance(seed, bool) or not isinstance(seed, (int, numpy.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int or a numpy.random.Generator, "
                             f"got {seed!r}")
        if len(sequences) == 0:
            raise ValueError("sequences must hold at least one sentence, got none")
        self._sequences = [numpy.asarray(s, dtype=ID_DTYPE) for s in sequences]
        short = [i for i, s in enumerate(self._sequences) if s.ndim != 1 or len(s) < 2]
        if short:
            raise ValueError(f"sequences must be 1-D with at least 2 ids (START and END); "
                             f"sequence {short[0]} is not")
        steps = numpy.array([len(s) - 1 for s in self._sequences])
        self._steps = steps if max_len is None else numpy.minimum(steps, max_len)
        self.shuffle = shuffle
        super().__init__(math.ceil(len(self._sequences) / self.batch_size), int(seed))

    def _plan(self, epoch: int) -> list[numpy.ndarray]:
        size = self.batch_size
        if not self.shuffle:
            order = numpy.argsort(self._steps, kind="stable")
            return [order[i:i + size] for i in range(0, len(order), size)]
        rng = numpy.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self._sequences))
        batches = []
        for start in range(0, len(order), size * self.pool):
            chunk = order[start:start + size * self.pool]
            chunk = chunk[numpy.argsort(self._steps[chunk], kind="stable")]
            batches.extend(chunk[i:i + size] for i in range(0, len(chunk), size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _make(self, rows: numpy.ndarray) -> tuple:
        steps = self._steps[rows]
        shape = (len(rows), int(steps.max()))
        inputs = numpy.full(shape, PAD_ID, dtype=ID_DTYPE)
        targets = numpy.full(shape, PAD_ID, dtype=ID_DTYPE)
        mask = numpy.zeros(shape, dtype=numpy.float32)
        for row, (index, n) in enumerate(zip(rows, steps)):
            sequence = self._sequences[index]
            inputs[row, :n] = sequence[:n]
            targets[row, :n] = sequence[1:n + 1]
            mask[row, :n] = 1.0
        return inputs, targets, mask


class StreamBatcher(_Batcher):
    """Consecutive chunks of one long id stream, for chunked truncated BPTT.

    The stream is cut into ``batch_size`` equal parallel streams (row b continues where row
    b-1 stops; the leftover tail is dropped) and each epoch walks them in order, ``seq_len``
    steps at a time: chunk k holds inputs ``s[kL : kL+L]`` and targets ``s[kL+1 : kL+L+1]`` of
    each row, so the last target of chunk k is the first input of chunk k+1 and the trainer
    can carry the hidden state from chunk to chunk (resetting it when ``batch.index == 0``).
    The last chunk may be shorter than ``seq_len``. No shuffling: every epoch is the same.

    Args:
        stream: 1-D token ids, e.g. ``numpy.concatenate(encode_sentences(...))``.
        batch_size: parallel streams B.
        seq_len: steps per chunk L.
    Yields:
        :class:`Batch` with inputs/targets of shape (B, L) and an all-ones mask.
    """

    kind = "stream"

    def __init__(self, stream: numpy.ndarray, batch_size: int, seq_len: int):
        self.batch_size = check_size(batch_size, "batch_size")
        self.seq_len = check_size(seq_len, "seq_len")
        stream = numpy.asarray(stream, dtype=ID_DTYPE)
        if stream.ndim != 1:
            raise ValueError(f"stream must be 1-D token ids, got shape {stream.shape}")
        per_row = (len(stream) - 1) // self.batch_size  # -1: the final target needs a successor
        if per_row < 1:
            raise ValueError(f"stream of {len(stream)} ids is too short for batch_size="
                             f"{self.batch_size}; need at least {self.batch_size + 1} ids")
        used = self.batch_size * per_row
        self._inputs = stream[:used].reshape(self.batch_size, per_row)
        self._targets = stream[1:used + 1].reshape(self.batch_size, per_row)
        super().__init__(math.ceil(per_row / self.seq_len), None)

    def _plan(self, epoch: int) -> range:
        return range(0, self._inputs.shape[1], self.seq_len)

    def _make(self, start: int) -> tuple:
        window = slice(start, start + self.seq_len)
        inputs = numpy.ascontiguousarray(self._inputs[:, window])
        targets = numpy.ascontiguousarray(self._targets[:, window])
        return inputs, targets, numpy.ones(inputs.shape, dtype=numpy.float32)
