"""Where a run writes, and how: output paths checked before training, a lock held while
training, stale temporaries cleared, and checkpoints written periodically, at the end and on
a stop.

Promises, each with a test:

* Nothing is overwritten by surprise. ``--checkpoint`` and ``--metrics`` may be neither the
  corpus nor each other; an existing file that is not a gpurnn checkpoint (or metrics file)
  is never replaced; an existing checkpoint is replaced only with ``--resume`` (which
  continues it) or ``--overwrite``. Folders, missing parents and unwritable folders are
  refused before the first step.
* One writer. A trainer holds an OS lock (``fcntl.flock``) on ``.NAME.lock`` beside the
  checkpoint and the metrics file while it runs; the kernel releases it when the process dies,
  however it dies, so a killed trainer never leaves it stuck. A second trainer refuses at once
  and names the holder's PID.
* Nothing half-written. Checkpoints are written to a temporary file and renamed
  (:mod:`gpurnn.training.checkpoint`); temporaries of that checkpoint left by a writer that
  died (``.NAME.xxxxxxxx.tmp``, owned by this user) are removed at the next start, and no
  other file is touched.
* A failed write (disk full, I/O error, permission lost) is retried once, a second later
  (a transient error or one that freed its own partial file passes then). If it fails again
  training stops at once: the previous checkpoint is intact and loadable, no partial file
  remains, and every step beyond that checkpoint is lost, which is why the run stops rather
  than going on to produce more steps it could not save. ``gpurnn train`` then exits 3 with
  one line naming the file and the error.
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import stat
import threading
import time
import warnings
from pathlib import Path

from .callbacks import Callback
from .checkpoint import CheckpointError, NonFiniteError, load_checkpoint, save_checkpoint
from .resuming import checkpoint_fields

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

__all__ = ["CheckpointWriteError", "CheckpointInUseError", "FileLock", "check_output_paths",
           "stale_temporaries", "CheckpointSaver", "RETRY_PAUSE_S"]

RETRY_PAUSE_S = 1.0  # before the one retry of a failed checkpoint write
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as the lock must not block open()


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (twice); the previous one is intact."""


class CheckpointInUseError(RuntimeError):
    """Another live trainer holds the lock of this checkpoint or metrics file."""


# --------------------------------------------------------------------------- paths, before

def check_output_paths(config, checkpoint: Path, metrics: Path) -> None:
    """Refuse (ValueError/FileExistsError/PermissionError naming the flag) output paths that
    are folders, lack a parent folder or write permission, or that would overwrite the
    corpus or each other."""
    for flag, path in (("--checkpoint", checkpoint), ("--metrics", metrics)):
        if path.is_dir():
            example = path / ("lm.npz" if flag == "--checkpoint" else "lm.jsonl")
            raise IsADirectoryError(f"{flag} {path} is a folder; give a file path such as "
                                    f"{example}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"folder {path.parent} for {path.name} does not exist")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise PermissionError(f"{flag} {path}: no permission to write in folder "
                                  f"{path.parent}")
    if _same_file(checkpoint, metrics):
        raise ValueError(f"--checkpoint and --metrics are the same file ({checkpoint}); give "
                         f"them different paths")
    if config.corpus is not None:
        corpus = Path(config.corpus)
        for flag, path in (("--checkpoint", checkpoint), ("--metrics", metrics)):
            inside = corpus.is_dir() and path.suffix.lower() == ".txt" and \
                _resolved(corpus) in _resolved(path).parents
            if _same_file(path, corpus) or inside:
                raise ValueError(f"{flag} {path} would overwrite the corpus {corpus}; give "
                                 f"another path")


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return _resolved(a) == _resolved(b)


def check_existing_outputs(config, checkpoint: Path, metrics: Path) -> None:
    """Without ``--resume``: refuse to replace a checkpoint unless ``--overwrite``, and never
    replace a file that is not gpurnn's. With it: the metrics file must be gpurnn's."""
    if not config.resume and checkpoint.exists():
        try:
            step = load_checkpoint(checkpoint).step
        except CheckpointError:
            raise FileExistsError(f"--checkpoint {checkpoint} exists and is not a gpurnn "
                                  f"checkpoint; refusing to replace it (give another path)") \
                from None
        if not config.overwrite:
            raise FileExistsError(f"--checkpoint {checkpoint} already holds a checkpoint (step "
                                  f"{step}); add --resume to continue it or --overwrite to "
                                  f"replace it")
    if metrics.is_file() and metrics.stat().st_size:
        if not is_metrics_file(metrics):
            raise FileExistsError(f"--metrics {metrics} exists and is not a gpurnn metrics "
                                  f"file; refusing to replace it (give another path)")
        if not config.resume and not config.overwrite and \
                not _run_without_checkpoint(metrics, checkpoint):
            raise FileExistsError(f"--metrics {metrics} already holds the metrics of a run; add "
                                  f"--resume to continue it or --overwrite to replace it")


def _run_without_checkpoint(metrics: Path, checkpoint: Path) -> bool:
    """Whether ``metrics`` are those of a run of this very checkpoint that never wrote it
    (stopped or failed before its first save): nothing to continue, nothing to keep."""
    if checkpoint.exists():
        return False
    with open(metrics, "rb") as file:
        first = file.readline(1 << 20)
    try:
        written_for = json.loads(first.decode("utf-8"))["config"]["checkpoint"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(written_for, str) and _same_file(Path(written_for), checkpoint)


def is_metrics_file(path: Path) -> bool:
    """Whether ``path`` starts as gpurnn train's JSON-lines metrics do."""
    with open(path, "rb") as file:
        first = file.readline(1 << 20)
    try:
        record = json.loads(first.decode("utf-8"))
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("event") in ("start", "resume")


# ------------------------------------------------------------------------------- the lock

class FileLock:
    """An exclusive ``flock`` on ``.NAME.lock`` beside ``target``, released by the kernel
    when the holder dies; the file holds the holder's PID and host for the refusal message,
    and is removed by a holder that ends normally."""

    def __init__(self, target: Path, flag: str):
        self.target, self.flag = Path(target), flag
        # Keyed by the file the name leads to: two trainers that reach one checkpoint through
        # different names (a symbolic link) take the same lock.
        resolved = _resolved(self.target)
        self.path = resolved.parent / f".{resolved.name}.lock"
        self._fd = None

    def _open(self) -> int:
        """The lock file, never through a symbolic link and only if it is a regular file of
        one name: a link (symbolic or hard) or a device planted under its name would have us
        write into another file."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK, 0o644)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise FileExistsError(f"{self.flag} {self.target}: its lock file {self.path} "
                                      f"is a symbolic link; gpurnn never writes through one "
                                      f"(remove it if no gpurnn train is running)") from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise FileExistsError(f"{self.flag} {self.target}: its lock file {self.path} is "
                                  f"not a regular file; remove it")
        if info.st_nlink > 1:  # a hard link to another file: writing the PID would cut it
            os.close(fd)
            raise FileExistsError(f"{self.flag} {self.target}: its lock file {self.path} has "
                                  f"{info.st_nlink} names (a hard link to another file); "
                                  f"gpurnn never writes into one (remove it if no gpurnn "
                                  f"train is running)")
        return fd

    def acquire(self) -> "FileLock":
        if fcntl is None:
            return self
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "a process"
                os.close(fd)
                raise CheckpointInUseError(
                    f"{self.flag} {self.target} is in use by another gpurnn train ({holder}); "
                    f"wait for it to end, stop it, or give another {self.flag}") from None
            # The previous holder may have removed the file between our open and our lock:
            # then we hold a lock on a name nobody else can find. Start again.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still held: nobody can take a lock on it meanwhile
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


# ------------------------------------------------------------------------ stale temporaries

def stale_temporaries(checkpoint: Path) -> list:
    """The temporaries that :func:`~gpurnn.training.checkpoint.save_checkpoint` makes for
    ``checkpoint`` (``.NAME.`` + 8 characters of ``tempfile`` + ``.tmp``), owned by this
    user. Call it only while holding the checkpoint's lock: then no live writer owns them."""
    pattern = re.compile(re.escape(f".{checkpoint.name}.") + r"[a-z0-9_]{8}" + r"\.tmp")
    found = []
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    for entry in os.scandir(checkpoint.parent):
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False) and \
                (uid is None or entry.stat(follow_symlinks=False).st_uid == uid):
            found.append(Path(entry.path))
    return sorted(found)


# -------------------------------------------------------------------------------- saving

class CheckpointSaver(Callback):
    """Writes the run's checkpoint every ``--checkpoint-every`` steps, at the end and on a
    stop; with ``--time-limit`` also after the first step, to measure what a write costs."""

    def __init__(self, config, path: Path, comm):
        self.config, self.path, self.comm = config, path, comm
        self.saved_step = None  # the step of the checkpoint at self.path of this run
        self._previous_xfsz = None

    def on_start(self, trainer) -> None:
        if trainer.config.resume:
            self.saved_step = trainer.step
        # A file-size limit (ulimit -f) kills a process that passes it with SIGXFSZ; ignored,
        # the write fails with EFBIG instead, which is reported and handled like a full disk.
        if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
            self._previous_xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def on_close(self, trainer) -> None:
        if self._previous_xfsz is not None:
            signal.signal(signal.SIGXFSZ, self._previous_xfsz)
            self._previous_xfsz = None

    def on_step_end(self, trainer) -> None:
        every = self.config.checkpoint_every
        periodic = every and trainer.step % every == 0
        to_measure = self.config.time_limit is not None and not trainer.longest["save"]
        if (periodic or to_measure) and trainer.guard.bad_in_a_row == 0 and \
                trainer.step < trainer.total_steps and not trainer.stopper.stopped:
            self.save(trainer)

    def on_end(self, trainer, result) -> None:
        self.save(trainer)

    def kept(self) -> str:
        """What is on disk now, for messages about a failure."""
        if self.saved_step is not None:
            return f"the last checkpoint, {self.path} (step {self.saved_step}), is intact"
        if self.path.exists():
            return f"{self.path} is unchanged"
        return "no checkpoint was written"

    def _advice(self) -> str:
        """What to run after a failed write: continue this run's checkpoint if it wrote
        one, else start again (a run without a checkpoint leaves no metrics in the way)."""
        if self.saved_step is not None:
            return f"fix it and continue with: gpurnn train --resume --checkpoint {self.path}"
        return "fix it and run the same gpurnn train command again"

    def save(self, trainer) -> None:
        start = time.perf_counter()
        fields = checkpoint_fields(trainer)  # collective: every rank calls it
        try:
            self.comm.collectively(lambda: self._write(fields) if self.comm.rank == 0 else None)
        except NonFiniteError as error:  # e.g. optimizer state overflowed: the run diverged
            raise trainer.guard.diverged(trainer.step, str(error), self.kept(),
                                         trainer.optimizer.lr) from None
        if self.comm.rank == 0:
            trainer.reporter.metrics.commit()  # its metrics now describe this checkpoint
        self.saved_step = trainer.step
        seconds = time.perf_counter() - start
        trainer.timing["save"] += seconds
        trainer.longest["save"] = max(trainer.longest["save"], seconds)

    def _write(self, fields: dict) -> None:
        for attempt in (1, 2):
            try:
                save_checkpoint(self.path, **fields)
                return
            except OSError as error:
                if attempt == 2:
                    raise CheckpointWriteError(
                        f"could not write checkpoint {self.path} at step {fields['step']}: "
                        f"{_describe(error)} (tried twice); {self.kept()}; {self._advice()}") \
                        from None
                warnings.warn(f"writing checkpoint {self.path} failed ({_describe(error)}); "
                              f"trying once more", RuntimeWarning, stacklevel=2)
                time.sleep(RETRY_PAUSE_S)


def _describe(error: OSError) -> str:
    name = errno.errorcode.get(error.errno, "") if error.errno else ""
    text = error.strerror or str(error)
    return f"{text} ({name})" if name else text
