"""Helpers of the labelling tests: an ``ambient eval``-shaped directory, HTTP calls, and
the real ``ambient label`` server in its own process (so a test can kill it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

XSS_SCRIPT = '<script>window.__xss = "script"; alert(1)</script>'
XSS_IMG = '"><img src=x onerror="window.__xss = \'img\'; alert(2)">'
HTMLISH = "<b>not bold</b> &amp; &lt;i&gt;"


def sample_rows(n: int) -> list[dict]:
    """``n`` samples.jsonl rows as ``ambient eval`` writes them; row 3 carries the planted
    markup (in the prompt and both answers)."""
    rows = []
    for i in range(n):
        prompt, policy, reference = f"prompt {i:02d}: why is the sky blue?", f"policy answer {i:02d}", f"reference answer {i:02d}"
        if i == 3:
            prompt, policy, reference = f"prompt {i:02d}: {XSS_SCRIPT}", f"policy {i:02d} {XSS_IMG}", f"reference {i:02d} {HTMLISH}"
        rows.append({"thread_id": f"t{i:02d}", "sample": 0, "prompt": prompt, "reference": reference,
                     "policy": policy, "reference_score": 0.0, "policy_score": 0.0, "kl": 0.0})
    return rows


def write_eval_dir(out: Path, n: int = 20) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "samples.jsonl").open("w") as f:
        for r in sample_rows(n):
            f.write(json.dumps(r) + "\n")
    (out / "manifest.json").write_text(json.dumps({"stage": "eval", "config": {"data": ""}}))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, dict]:
    """One HTTP request; (status, JSON body)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", content_type)
    def parse(b: bytes) -> dict:
        try:
            return json.loads(b or b"{}")
        except json.JSONDecodeError:  # the router's plain-text 404
            return {"text": b.decode(errors="replace")}
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, parse(r.read())
    except urllib.error.HTTPError as e:
        return e.code, parse(e.read())


class Server:
    """``ambient label`` in a child process."""

    def __init__(self, db: Path, sources: list[Path], port: int, extra: tuple[str, ...] = ()):
        self.db, self.sources, self.port, self.extra = db, sources, port, extra
        self.url = f"http://127.0.0.1:{port}/"
        self.proc: subprocess.Popen | None = None
        self.log = db.parent / f"server-{port}.log"

    def start(self) -> "Server":
        env = {**os.environ, "PYTHONPATH": str(SRC), "AMBIENT_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "ambient_rlhf.cli", "label", "--db", str(self.db), "--port", str(self.port),
               *self.extra]
        if self.sources:
            cmd += ["--samples", *map(str, self.sources)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label server exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "static/label.css", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"label server did not answer in 60 s: {self.log.read_text()}")

    def kill(self) -> None:
        """A real kill: SIGKILL, no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
