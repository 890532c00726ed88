"""Reply sentiment scored beside the reader: a second process runs VADER while the first
parses.

Reading a Reddit dump is one core's work (decompress, parse, filter); scoring every direct
reply with VADER (:mod:`ambient_rlhf.data.vader`) costs about as much again.  The readers
hand each reply's text to a :class:`ReplyScorer` and get a *ticket* back; texts travel in
batches to a worker process that scores them while the reader goes on; a thread's
``reply_sentiment`` is settled (:meth:`ReplyScorer.settle`) only when the thread closes,
by which time its replies have long been scored.  The numbers are the ones the reader
would compute itself: each score is the same pure function of the text, and a response's
sum is taken over its replies in the order they were read, starting from ``0.0`` -- the
same float additions as scoring inline.

The worker -- a plain ``python -c`` subprocess reading length-prefixed batches of texts on
its stdin and writing the scores as doubles on its stdout -- starts with the first full
batch, so a small input never pays for a process.  Where none can be started, or with
``labels.sentiment_process=false``, the same batches are scored in the reading process.
A worker that fails or dies raises an :class:`~ambient_rlhf.AmbientError` in the reader;
it never hangs it.
"""

from __future__ import annotations

import logging
import queue
import struct
import subprocess
import sys
import threading
from array import array

from ambient_rlhf import AmbientError
from ambient_rlhf.data import vader

log = logging.getLogger(__name__)

BATCH = 512
"""Replies per batch sent to the worker (a few hundred KB of text)."""

_WORKER = "from ambient_rlhf.data.reply_scorer import serve; serve()"
_END = 0xFFFFFFFF  # frame header: no more texts (to the worker) / an error message follows (back)
_HEAD = struct.Struct("<I")


def _read_exact(f, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise EOFError
    return b


def write_texts(f, texts: list[str] | None) -> None:
    """One frame: count, byte lengths, then the UTF-8 bytes (lone surrogates, which JSON
    escapes can produce, pass through unchanged)."""
    if texts is None:
        f.write(_HEAD.pack(_END))
        return
    enc = [t.encode("utf-8", "surrogatepass") for t in texts]
    f.write(_HEAD.pack(len(enc)) + array("I", map(len, enc)).tobytes() + b"".join(enc))


def read_texts(f) -> list[str] | None:
    (n,) = _HEAD.unpack(_read_exact(f, 4))
    if n == _END:
        return None
    lens = array("I")
    lens.frombytes(_read_exact(f, 4 * n))
    data = _read_exact(f, sum(lens))
    out, pos = [], 0
    for k in lens:
        out.append(data[pos:pos + k].decode("utf-8", "surrogatepass"))
        pos += k
    return out


def write_scores(f, scores: list[float]) -> None:
    """One frame: count, then the doubles as they are (bit-exact)."""
    f.write(_HEAD.pack(len(scores)) + array("d", scores).tobytes())


def read_scores(f) -> list[float]:
    (n,) = _HEAD.unpack(_read_exact(f, 4))
    if n == _END:
        (k,) = _HEAD.unpack(_read_exact(f, 4))
        raise _WorkerError(_read_exact(f, k).decode("utf-8", "replace"))
    a = array("d")
    a.frombytes(_read_exact(f, 8 * n))
    return a.tolist()


class _WorkerError(Exception):
    pass


def serve(inp=None, out=None) -> None:
    """The worker (a plain ``python -c`` subprocess, so that no ``__main__`` is re-imported
    and no lock of the reader is inherited): read framed batches of texts from stdin,
    write their scores, in order, to stdout, until the end frame arrives.  Nothing is
    unpickled: both directions are length-prefixed bytes."""
    inp = inp or sys.stdin.buffer
    out = out or sys.stdout.buffer
    v = vader.analyser()
    while True:
        texts = read_texts(inp)
        if texts is None:
            break
        try:
            write_scores(out, v.compounds(texts))
        except Exception as e:  # noqa: BLE001 -- reported to the reader, which raises it
            msg = f"{type(e).__name__}: {e}".encode()
            out.write(_HEAD.pack(_END) + _HEAD.pack(len(msg)) + msg)
        out.flush()


def _grow_pipe(f, size: int = 1 << 20) -> None:
    """Enlarge a pipe's kernel buffer (Linux; elsewhere, or when refused, keep the default)."""
    try:
        import fcntl

        fcntl.fcntl(f.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):
        pass


class ReplyScorer:
    """VADER compound scores of reply texts, computed in batches (see module doc).

    ``add(text)`` returns a ticket; ``take(ticket)`` returns that text's score exactly
    once; ``drop(tickets)`` forgets tickets whose scores are not needed (a dropped
    thread), so that memory stays bounded by the replies of the threads still open.
    """

    def __init__(self, process: bool = True, batch: int | None = None):
        self.batch = batch or BATCH
        self.want_process = process
        self._buf: list[str] = []
        self._next = 0  # next ticket
        self._sent = 0  # batches handed to the worker (or scored inline)
        self._got = 0  # batches whose scores came back
        self._results: dict[int, list] = {}  # batch -> [scores, tickets not yet taken]
        self._dropped: dict[int, int] = {}  # batch not back yet -> tickets dropped from it
        self._proc: subprocess.Popen | None = None
        self._outq: queue.SimpleQueue | None = None
        self._reader: threading.Thread | None = None
        self.mode = "inline"

    # ------------------------------------------------------------------ feeding
    def add(self, text: str) -> int:
        t = self._next
        self._next += 1
        self._buf.append(text)
        if len(self._buf) >= self.batch:
            self._flush()
        return t

    def _flush(self) -> None:
        texts, self._buf = self._buf, []
        if not texts:
            return
        if self._proc is None and self.want_process and len(texts) == self.batch:
            self._start()  # the first full batch: worth a process
        b = self._sent
        self._sent += 1
        self._next = self._sent * self.batch  # tickets of batch b are b * batch + i
        if self._proc is not None:
            self._send(texts)
        else:
            self._got += 1
            left = len(texts) - self._dropped.pop(b, 0)
            if left:
                self._results[b] = [vader.compounds(texts), left]

    def _start(self) -> None:
        """Start the worker; on failure keep scoring inline (said once in the log)."""
        self.want_process = False  # one attempt
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE)
        except OSError as e:
            log.info("reply sentiment: scoring in this process (no worker process: %s)", e)
            return
        _grow_pipe(self._proc.stdin)  # let the reader run ahead of the worker by a few batches
        self._outq = queue.SimpleQueue()
        # a reader thread drains the worker's stdout, so neither side blocks on a full pipe
        self._reader = threading.Thread(target=self._drain, args=(self._proc.stdout, self._outq),
                                        name="ambient-reply-sentiment", daemon=True)
        self._reader.start()
        self.mode = "process"

    @staticmethod
    def _drain(pipe, q) -> None:
        try:
            while True:
                q.put(read_scores(pipe))
        except EOFError:
            q.put(("eof", None))
        except _WorkerError as e:
            q.put(("error", str(e)))
        except Exception as e:  # noqa: BLE001
            q.put(("error", f"reading the scoring process's output: {e}"))

    def _send(self, texts: list[str]) -> None:
        try:
            write_texts(self._proc.stdin, texts)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._died()

    def _died(self):
        code = self._proc.poll()
        raise AmbientError(f"reply sentiment: the scoring process ended early (exit code {code}); rerun with "
                           "labels.sentiment_process=false to score in the reading process")

    # ------------------------------------------------------------------ results
    def _receive(self) -> None:
        """Wait for the next batch of scores from the worker."""
        r = self._outq.get()
        if isinstance(r, tuple):
            if r[0] == "eof":
                self._died()
            raise AmbientError(f"reply sentiment: the scoring process failed: {r[1]}")
        b = self._got
        self._got += 1
        left = len(r) - self._dropped.pop(b, 0)
        if left:
            self._results[b] = [r, left]

    def ready(self, ticket: int) -> bool:
        """Whether ``take(ticket)`` would return without waiting (never waits itself; a
        ticket of ``-1`` -- no replies -- is always ready)."""
        if ticket < 0:
            return True
        b = ticket // self.batch
        if b >= self._sent:
            return False  # still in the unsent batch
        while b >= self._got and self._proc is not None and not self._outq.empty():
            self._receive()
        return b < self._got

    def take(self, ticket: int) -> float:
        """The score of ``ticket`` (waits for the worker if need be); each ticket once."""
        b, i = divmod(ticket, self.batch)
        if b >= self._sent:
            self._flush()  # the ticket is still in the unsent batch
        while b >= self._got:
            self._receive()
        slot = self._results[b]
        v = slot[0][i]
        self._taken(b, slot)
        return v

    def _taken(self, b: int, slot: list) -> None:
        slot[1] -= 1
        if slot[1] == 0:
            del self._results[b]

    def drop(self, tickets) -> None:
        """Forget tickets whose scores are not needed (never waits)."""
        for t in tickets:
            b = t // self.batch
            slot = self._results.get(b)
            if slot is not None:
                self._taken(b, slot)
            else:  # not back yet: counted off when it arrives
                self._dropped[b] = self._dropped.get(b, 0) + 1

    def settle(self, response, tickets: list[int]) -> None:
        """``response.sentiment_sum`` / ``n_replies`` from its replies' tickets, summed in
        reading order (the same float additions as scoring inline)."""
        s = response.sentiment_sum
        for t in tickets:
            s += self.take(t)
        response.sentiment_sum = s
        response.n_replies += len(tickets)

    # ------------------------------------------------------------------ end
    def close(self) -> None:
        """Stop the worker (idempotent)."""
        p, self._proc = self._proc, None
        if p is None:
            return
        try:
            if self._got == self._sent and p.poll() is None:  # idle: let it finish
                write_texts(p.stdin, None)
                p.stdin.close()
                p.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if p.poll() is None:  # abandoned mid-way (an error in the reader) or stuck
                p.kill()
                p.wait()
            self._reader.join(timeout=5)  # it sees end-of-file once the worker is gone
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
