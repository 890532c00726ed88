"""Streaming readers for the three input formats, and input discovery.

* Pushshift / Arctic Shift NDJSON dumps, plain or ``.zst`` (2 GiB window, multi-frame);
* a responses table: CSV, JSONL or Parquet (``.csv``/``.jsonl`` may also be ``.zst``);
* SHP pair files (JSONL, CSV or Parquet).

Readers yield ``(line, record)`` one at a time and never hold a file in memory.  Every
malformed record goes to :class:`BadRecords` as ``file:line: reason`` (the first few
are printed, all are counted) and reading goes on.  A truncated or corrupt ``.zst``
stream is an error naming the file and the byte offset, unless the caller asks to keep
what can be read (``source.keep_damaged``; see :func:`iter_lines`).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ambient_rlhf import AmbientError
from ambient_rlhf.data.zst import (CHUNK, ZSTD_WINDOW, PiecesReader, StreamDamage,  # noqa: F401 (re-exported)
                                   iter_zst_lines, zst_pieces)
from ambient_rlhf.logging import get_logger, progress

log = get_logger("data.sources")
loads = json.loads

TABLE_EXTS = (".csv", ".jsonl", ".json", ".ndjson", ".parquet", ".pq")
SHP_COLUMNS = ("post_id", "history", "human_ref_A", "human_ref_B", "score_A", "score_B")


class BadRecords:
    """Counts bad records per file and reason; prints the first ``show`` of them."""

    def __init__(self, show: int = 5, echo: bool = True):
        self.show = show
        self.echo = echo  # print the first ``show`` on stderr (a parallel build's workers keep them quiet)
        self.total = 0
        self.seen = 0  # records (lines, rows) looked at, good or bad: the fraction's denominator
        self.by_file: dict[str, int] = {}
        self.by_reason: dict[str, int] = {}
        self.examples: list[str] = []
        self.damaged: list[StreamDamage] = []  # cut .zst streams read with keep_damaged

    def add(self, path: str | Path, line: int | None, reason: str, kind: str | None = None) -> None:
        """Record one bad record; ``kind`` is the short reason used for counting."""
        self.total += 1
        p = str(path)
        self.by_file[p] = self.by_file.get(p, 0) + 1
        k = kind or reason.split(":")[0].split("(")[0].strip()
        self.by_reason[k] = self.by_reason.get(k, 0) + 1
        msg = f"{p}:{line}: {reason}" if line is not None else f"{p}: {reason}"
        if len(self.examples) < self.show:
            self.examples.append(msg)
            if self.echo:
                print(f"warning: {msg}", file=sys.stderr)
        elif self.echo and len(self.examples) == self.show and self.total == self.show + 1:
            # not "in manifest.json": a build that fails writes none (its error says how many)
            print("warning: more bad records follow (not shown; all are counted)", file=sys.stderr)

    @property
    def fraction(self) -> float:
        return self.total / max(self.seen, 1)

    def as_dict(self) -> dict[str, Any]:
        d = {"total": self.total, "records_seen": self.seen, "fraction": round(self.fraction, 6),
             "by_file": self.by_file, "by_reason": self.by_reason, "examples": self.examples}
        if self.damaged:
            d["damaged_streams"] = [x.as_dict() for x in self.damaged]
        return d


# ---------------------------------------------------------------- raw line access

def check_file(path: str | Path) -> Path:
    """A readable, non-empty file, else a one-line AmbientError naming it."""
    p = Path(path)
    if not p.exists():
        raise AmbientError(f"{p}: no such file or directory")
    if p.is_dir():
        raise AmbientError(f"{p}: is a directory (expected a file)")
    if p.stat().st_size == 0:
        raise AmbientError(f"{p}: file is empty")
    return p


def is_zst(path: str | Path) -> bool:
    return str(path).endswith(".zst")


def base_name(path: str | Path) -> str:
    """File name without a compression suffix (``x.ndjson.zst`` -> ``x.ndjson``)."""
    name = Path(path).name
    return name[:-4] if name.endswith(".zst") else name


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _bar(desc: str | None, total: int | None, unit: str):
    """A progress bar when ``desc`` is given, else a no-op with the same interface."""
    return progress(total=total, desc=desc, unit=unit) if desc else _NoBar()


def iter_lines(path: str | Path, bad: BadRecords | None = None, desc: str | None = None,
               keep_damaged: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line_number, raw_line)`` for every non-blank line of a plain or ``.zst`` file.

    ``.zst`` is decompressed chunk by chunk (any number of frames, 2 GiB window).  A
    stream that ends inside a frame, or a corrupt frame, is an :class:`AmbientError`
    naming the file and the byte offset.  With ``keep_damaged`` every line that can be
    decoded is yielded instead: the lines before the damage (including those decoded from
    the same chunk), and after a corrupt stretch, those of the next frame found; in place
    of the gap comes one ``(line, StreamDamage)``, also recorded in ``bad.damaged``.  A
    line cut by the damage is dropped and its bytes counted.  With ``desc``, a progress
    bar over the file's (compressed) bytes shows the rate and the ETA.
    """
    p = check_file(path)
    lineno = 0
    bar = progress(total=p.stat().st_size, desc=desc, unit="B", unit_scale=True) if desc else None
    try:
        if not is_zst(p):
            with open(p, "rb") as f:
                done = 0
                for raw in f:
                    lineno += 1
                    if bar is not None:
                        done += len(raw)
                        if done >= CHUNK:
                            bar.update(done)
                            done = 0
                    if raw.strip():
                        yield lineno, raw.rstrip(b"\r\n")
            return
        yield from iter_zst_lines(p, bad, bar, keep_damaged)
    finally:
        if bar is not None:
            bar.close()


def iter_json_objects(path: str | Path, bad: BadRecords, desc: str | None = None,
                      keep_damaged: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line, object)`` for every line that parses to a JSON object; the others are bad.
    A :class:`StreamDamage` (``keep_damaged``) is passed on in place of an object.

    ``bad.seen`` counts every non-blank line, good or bad."""
    for lineno, raw in iter_lines(path, bad, desc, keep_damaged):
        if type(raw) is StreamDamage:
            yield lineno, raw
            continue
        bad.seen += 1
        try:
            obj = loads(raw.decode("utf-8"))  # str input skips json's encoding sniffing
        except ValueError as e:
            bad.add(path, lineno, f"malformed JSON ({str(e)[:80]})", kind="malformed JSON")
            continue
        if not isinstance(obj, dict):
            bad.add(path, lineno, f"expected a JSON object, got {type(obj).__name__}", kind="not an object")
            continue
        yield lineno, obj


def iter_records(path: str | Path, bad: BadRecords, schema: type, desc: str | None = None,
                 keep_damaged: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line, record)`` for every line that decodes to ``schema`` (a msgspec Struct of
    :mod:`ambient_rlhf.data.records`); every other line is a bad record naming the field.
    A :class:`StreamDamage` (``keep_damaged``) is passed on in place of a record.

    ``bad.seen`` counts every non-blank line, good or bad."""
    import msgspec

    from ambient_rlhf.data.records import decoder, explain

    decode = decoder(schema).decode
    for lineno, raw in iter_lines(path, bad, desc, keep_damaged):
        if type(raw) is StreamDamage:
            yield lineno, raw
            continue
        bad.seen += 1
        try:
            rec = decode(raw)
        except msgspec.MsgspecError as e:  # malformed JSON, or a field of the wrong type
            err = explain(e)
            bad.add(path, lineno, str(err), kind=err.kind)
            continue
        yield lineno, rec


def open_text(path: str | Path):
    """Text stream of a plain or ``.zst`` file (for CSV)."""
    p = check_file(path)
    if is_zst(p):
        # through zst_pieces, so a truncated or corrupt stream is an error here too
        reader = io.BufferedReader(PiecesReader(zst_pieces(p, False, None)), buffer_size=CHUNK)
        return io.TextIOWrapper(reader, encoding="utf-8", errors="replace", newline="")
    return open(p, encoding="utf-8", errors="replace", newline="")


def iter_table_rows(path: str | Path, bad: BadRecords, desc: str | None = None,
                    keep_damaged: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line_or_row, row_dict)`` of a CSV, JSONL or Parquet table, streamed.

    CSV: the line where the record starts (header = line 1).  Parquet: the row number
    (header-less, 1-based)."""
    name = base_name(path).lower()
    if name.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        check_file(path)
        try:
            pf = pq.ParquetFile(str(path))
        except Exception as e:  # pyarrow raises several types for non-parquet input
            raise AmbientError(f"{path}: not a readable Parquet file ({e})") from None
        row = 0
        with _bar(desc, pf.metadata.num_rows, "row") as bar:
            for batch in pf.iter_batches(batch_size=4096):
                for rec in batch.to_pylist():
                    row += 1
                    bad.seen += 1
                    yield row, rec
                bar.update(batch.num_rows)
        return
    if name.endswith((".jsonl", ".json", ".ndjson")):
        yield from iter_json_objects(path, bad, desc, keep_damaged)
        return
    if name.endswith(".csv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with open_text(path) as f, _bar(desc, None, "row") as bar:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                raise AmbientError(f"{path}: file is empty") from None
            except csv.Error as e:
                raise AmbientError(f"{path}:1: unreadable CSV header ({e})") from None
            start = reader.line_num + 1
            while True:
                try:
                    values = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    bad.seen += 1
                    bad.add(path, start, f"malformed CSV ({e})", kind="malformed CSV")
                    start = reader.line_num + 1
                    continue
                line = start
                start = reader.line_num + 1
                if not values or (len(values) == 1 and not values[0].strip()):
                    continue
                bad.seen += 1
                bar.update(1)
                if len(values) != len(header):
                    bad.add(path, line, f"expected {len(header)} fields, got {len(values)}", kind="wrong field count")
                    continue
                yield line, dict(zip(header, values))
        return
    raise AmbientError(f"{path}: unknown table extension; use .csv, .jsonl or .parquet (optionally .zst)")


def table_columns(path: str | Path) -> list[str]:
    """Column names of a table file (first record for JSONL)."""
    name = base_name(path).lower()
    if name.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        try:
            return list(pq.ParquetFile(str(path)).schema_arrow.names)
        except Exception as e:
            raise AmbientError(f"{path}: not a readable Parquet file ({e})") from None
    if name.endswith(".csv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with open_text(path) as f:
            try:
                return next(csv.reader(f))
            except (StopIteration, csv.Error):
                return []
    first = first_json_object(path)
    return list(first) if first else []


def first_json_object(path: str | Path, max_lines: int = 20) -> dict | None:
    """The first line that parses to a JSON object (for format detection)."""
    for n, (_, raw) in enumerate(iter_lines(path, BadRecords(show=0), keep_damaged=True)):
        if n >= max_lines:
            break
        if type(raw) is StreamDamage:
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


# ---------------------------------------------------------------- input discovery

@dataclass
class Input:
    """One logical input: a dump (submissions + comments), a table or an SHP file."""

    kind: str  # "reddit" | "table" | "shp"
    paths: list[Path] = field(default_factory=list)

    @property
    def submissions(self) -> Path | None:
        return self.paths[0] if self.kind == "reddit" else None

    @property
    def comments(self) -> Path | None:
        return self.paths[1] if self.kind == "reddit" else None


def _dump_role(path: Path) -> str | None:
    """``submissions``/``comments`` from the name, else from the first record."""
    n = base_name(path).lower()
    if "_submissions" in n or n.startswith("rs_") or n.startswith("submissions"):
        return "submissions"
    if "_comments" in n or n.startswith("rc_") or n.startswith("comments"):
        return "comments"
    return None


def _sniff(path: Path) -> str | None:
    """Guess a single file's kind from its content: submissions, comments, shp or table."""
    name = base_name(path).lower()
    if name.endswith((".parquet", ".pq", ".csv")):
        cols = set(table_columns(path))
        if set(SHP_COLUMNS) <= cols:
            return "shp"
        return "table" if cols else None
    obj = first_json_object(path)
    if obj is None:
        return None
    if set(SHP_COLUMNS) <= set(obj):
        return "shp"
    if "link_id" in obj and "parent_id" in obj and "body" in obj:
        return "comments"
    if "title" in obj and ("selftext" in obj or "num_comments" in obj):
        return "submissions"
    return "table"


def discover(sources: list[str], fmt: str = "auto") -> list[Input]:
    """Resolve SOURCE arguments (files or directories) into :class:`Input` s.

    A directory contributes its ``*_submissions*``/``*_comments*`` pairs, else its table
    and SHP files.  A dump needs both files; they are paired by the name before
    ``_submissions``/``_comments``.  ``fmt`` forces the kind (``reddit``/``table``/``shp``).
    """
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if not p.exists():
            raise AmbientError(f"{p}: no such file or directory")
        if p.is_dir():
            inside = sorted(x for x in p.iterdir() if x.is_file() and not x.name.startswith("."))
            # manifest.json: every stage directory has one (e.g. `ambient data simulate` output)
            usable = [x for x in inside if x.name != "manifest.json"
                      and (_dump_role(x) or base_name(x).lower().endswith(TABLE_EXTS))]
            if not usable:
                raise AmbientError(
                    f"{p}: no input files found (expected *_submissions/*_comments dumps or a "
                    f".csv/.jsonl/.parquet table)")
            files.extend(usable)
        else:
            files.append(p)
    for f in files:
        check_file(f)

    roles: dict[Path, str] = {}
    for f in files:
        if fmt == "table":
            roles[f] = "table"
        elif fmt == "shp":
            roles[f] = "shp"
        else:
            role = _dump_role(f) if fmt in ("auto", "reddit") else None
            if role is None:
                role = _sniff(f)
            if role is None:
                raise AmbientError(f"{f}: cannot tell the format from its name or content; pass --format reddit|table|shp")
            if fmt == "reddit" and role not in ("submissions", "comments"):
                raise AmbientError(f"{f}: --format reddit needs *_submissions / *_comments NDJSON files")
            roles[f] = role

    def key(f: Path) -> str:
        n = base_name(f)
        for tag in ("_submissions", "_comments"):
            i = n.lower().find(tag)
            if i >= 0:
                return str(f.parent / n[:i])
        return str(f.parent)

    inputs: list[Input] = []
    subs = {key(f): f for f, r in roles.items() if r == "submissions"}
    coms = {key(f): f for f, r in roles.items() if r == "comments"}
    for k in sorted(set(subs) | set(coms)):
        if k not in subs:
            raise AmbientError(f"{coms[k]}: comments file without its submissions file; pass both (*_submissions and *_comments)")
        if k not in coms:
            raise AmbientError(f"{subs[k]}: submissions file without its comments file; pass both (*_submissions and *_comments)")
        inputs.append(Input("reddit", [subs[k], coms[k]]))
    for f, r in roles.items():
        if r in ("table", "shp"):
            inputs.append(Input(r, [f]))
    if not inputs:
        raise AmbientError(f"{', '.join(sources)}: no input found")
    return inputs
