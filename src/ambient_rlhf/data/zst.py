"""The ``.zst`` stream of a dump: decompressed pieces, lines, and the damage a truncated or
corrupt stream has (:class:`StreamDamage`), found and -- with ``keep_damaged`` -- skipped to
the next frame instead of raised.  Used by :mod:`ambient_rlhf.data.sources`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterator

from ambient_rlhf import AmbientError

ZSTD_WINDOW = 2**31  # real dumps are written with `zstd --long=31`
CHUNK = 1 << 20


class StreamDamage:
    """Where a ``.zst`` stream is cut: a truncated file (``kind="truncated"``), or a
    corrupt stretch skipped up to the next frame (``kind="corrupt"``).

    :func:`iter_lines` yields it in place of the lost lines (``keep_damaged``), so a
    reader can drop what the gap may have touched (e.g. the threads open at the cut)."""

    __slots__ = ("path", "kind", "offset", "resumed_at", "skipped_bytes", "partial_bytes", "line", "error")

    def __init__(self, path: Path, kind: str, offset: int, resumed_at: int | None, skipped_bytes: int,
                 error: str):
        self.path, self.kind, self.offset, self.resumed_at = path, kind, offset, resumed_at
        self.skipped_bytes, self.error = skipped_bytes, error
        self.partial_bytes = 0  # decompressed bytes of the cut lines on either side of the gap
        self.line = 0  # the line number the gap takes

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "kind": self.kind, "line": self.line, "offset": self.offset,
                "resumed_at": self.resumed_at, "compressed_bytes_skipped": self.skipped_bytes,
                "partial_line_bytes_dropped": self.partial_bytes, "error": self.error}


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # every zstd frame starts with it
SALVAGE_SLICE = 256  # input bytes per call while recovering the decodable part of a corrupt frame
KEEP_HINT = ("pass --keep-damaged (source.keep_damaged=true) to build from the lines that can be read; "
             "the threads the damage touches are then dropped and counted")


def zst_pieces(p: Path, keep: bool, bar) -> Iterator[Any]:
    """Decompressed pieces (``bytes``) of a ``.zst`` file, and a :class:`StreamDamage`
    where it is cut (only with ``keep``; otherwise the damage is an AmbientError)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW)
    size = p.stat().st_size
    with open(p, "rb") as f:
        pos = 0  # file offset of the next byte to read
        frame_start, frame_out = 0, 0  # the current frame: where it starts, bytes it gave so far
        dobj = dctx.decompressobj()
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            if bar is not None:
                bar.update(len(chunk))
            base = pos  # file offset of ``chunk``
            pos += len(chunk)
            try:
                while chunk:
                    out = dobj.decompress(chunk)
                    if out:
                        frame_out += len(out)
                        yield out  # passed on at once: a later error loses none of it
                    if not dobj.eof:
                        break
                    base += len(chunk) - len(dobj.unused_data)
                    chunk = dobj.unused_data
                    frame_start, frame_out = base, 0
                    dobj = dctx.decompressobj()
            except zstandard.ZstdError as e:
                where = (f"{p}: corrupt zstd data at byte {base}..{pos} (in the frame that starts at byte "
                         f"{frame_start}): {e}")
                if not keep:
                    raise AmbientError(f"{where}; {KEEP_HINT}") from None
                # the error lost the output of its last call: decode the frame again in small
                # slices, then byte by byte in the slice that fails, to get every block before
                # the damaged one (a bad checksum fails only after the frame's last block)
                _, fail_at = _salvage(f, dctx, frame_start, frame_out, base, SALVAGE_SLICE)
                more, good_end = _salvage(f, dctx, frame_start, frame_out, fail_at, 1)
                if more:
                    yield more
                nxt = _next_frame(f, good_end + 1, size)
                yield StreamDamage(p, "corrupt", good_end, nxt, (nxt if nxt is not None else size) - good_end,
                                   str(e))
                if nxt is None:
                    return
                f.seek(nxt)
                pos = frame_start = nxt
                frame_out = 0
                dobj = dctx.decompressobj()
        if pos > frame_start:  # the file ends inside a frame: its tail is missing
            if not keep:
                raise AmbientError(f"{p}: truncated zstd stream: the file ends at byte {size}, inside the frame "
                                   f"that starts at byte {frame_start}; {KEEP_HINT}")
            yield StreamDamage(p, "truncated", size, None, 0, "file ends inside a frame")


def _salvage(f, dctx, frame_start: int, frame_out: int, ok_until: int, step: int) -> tuple[bytes, int]:
    """Decode the frame at ``frame_start`` again up to its damage, ``step`` input bytes per
    call after ``ok_until`` (the part before is known to decode).  Return the output past
    the first ``frame_out`` bytes (already passed on) and the file offset up to which the
    input decoded without an error."""
    import zstandard

    dobj = dctx.decompressobj()
    f.seek(frame_start)
    at, produced, parts = frame_start, 0, []
    while True:
        n = min(CHUNK, ok_until - at) if at < ok_until else step
        piece = f.read(n)
        if not piece:
            break
        try:
            out = dobj.decompress(piece)
        except zstandard.ZstdError:
            break
        at += len(piece)
        if out:
            keep_from = max(0, frame_out - produced)
            produced += len(out)
            if keep_from < len(out):
                parts.append(out[keep_from:])
        if dobj.eof:  # not expected (the same bytes failed before); stop at the frame's end
            break
    return b"".join(parts), at


def _next_frame(f, start: int, size: int) -> int | None:
    """File offset of the next zstd frame magic at or after ``start`` (None: none)."""
    f.seek(start)
    at, tail = start, b""
    while at < size:
        block = f.read(CHUNK)
        if not block:
            break
        hay = tail + block
        i = hay.find(ZSTD_MAGIC)
        if i >= 0:
            return at - len(tail) + i
        tail = hay[-(len(ZSTD_MAGIC) - 1):]
        at += len(block)
    return None


def iter_zst_lines(p: Path, bad: Any, bar, keep: bool) -> Iterator[tuple[int, Any]]:
    lineno = 0
    buf = b""
    damage: StreamDamage | None = None  # set after a gap: the next fragment is a cut line
    for piece in zst_pieces(p, keep, bar):
        if type(piece) is StreamDamage:
            piece.partial_bytes += len(buf)  # the line cut at the damage
            buf = b""
            lineno += 1
            piece.line = lineno
            if bad is not None:
                bad.damaged.append(piece)
            yield lineno, piece
            damage = piece if piece.resumed_at is not None else None
            continue
        buf += piece
        lines = buf.split(b"\n")
        buf = lines.pop()
        if damage is not None and lines:
            # the text before the first newline after a gap is the tail of a cut line, unless
            # the frame found starts a line (an NDJSON line starts with "{")
            if not lines[0].startswith(b"{"):
                damage.partial_bytes += len(lines[0]) + 1
                lines = lines[1:]
            damage = None
        for raw in lines:
            lineno += 1
            if raw.strip():
                yield lineno, raw
    if damage is not None:
        damage.partial_bytes += len(buf)
    elif buf.strip():
        yield lineno + 1, buf


class PiecesReader(io.RawIOBase):
    """A readable binary stream over an iterator of ``bytes`` pieces."""

    def __init__(self, pieces: Iterator[bytes]):
        self.pieces, self.rest = pieces, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.rest:
            self.rest = next(self.pieces, b"")
            if not self.rest:
                return 0
        n = min(len(b), len(self.rest))
        b[:n] = self.rest[:n]
        self.rest = self.rest[n:]
        return n

    def close(self) -> None:
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()
        super().close()
