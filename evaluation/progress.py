"""Progress of a long run on stderr: "step k/N name ... (elapsed s)", with a heartbeat.

The report runs for minutes and some steps (cross-validation, t-SNE) for a minute or
more; a reader watching the terminal should never wonder whether it hangs. Every step
prints a line when it starts and when it ends, and a heartbeat prints one more line every
`heartbeat` seconds while a step runs (with the step's latest note, e.g. the fold seed).

Where the lines go to the real stderr, the heartbeat comes from a small child process
(this file run as a script) fed the current step through a pipe: a thread of this
process could not print while a C call holds the GIL (scipy's SVD inside PCA held it for
28-32 s at load 14). Elsewhere (a test's stream) a thread beats instead. Timings are kept
for metrics.json whether or not lines are printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import IO, TextIO

HEARTBEAT_SECONDS = 15.0


def beat_line(label: str, note: str, in_step: float, elapsed: float) -> str:
    return f"{label} ...{f' {note},' if note else ''} {in_step:.0f} s in this step (elapsed {elapsed:.0f} s)"


class _Ticker:
    """The heartbeat child process: told each step's label, start and note; closed on EOF."""

    def __init__(self, heartbeat: float, run_start: float):
        self.process = subprocess.Popen(
            # -I: isolated, so this folder's modules cannot shadow the standard library's
            [sys.executable, "-I", __file__, str(heartbeat), str(run_start)],
            stdin=subprocess.PIPE,
            text=True,
        )
        self._finalizer = weakref.finalize(self, _close, self.process)

    def send(self, state: dict) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.closed:
            return
        try:
            stdin.write(json.dumps(state) + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the ticker is gone: the run goes on without a heartbeat

    def close(self) -> None:
        self._finalizer()


def _close(process: subprocess.Popen) -> None:
    if process.stdin is not None and not process.stdin.closed:
        with suppress(OSError):
            process.stdin.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Progress:
    """Named steps of a planned run; `timings` holds each finished step's seconds."""

    def __init__(
        self,
        plan: Sequence[str] = (),
        enabled: bool = True,
        stream: TextIO | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
    ):
        self.plan = list(plan)
        self.enabled = enabled
        self.stream = stream
        self.heartbeat = heartbeat
        self.timings: dict[str, float] = {}
        self.start = time.perf_counter()
        self._wall_start = time.time()
        self._done = 0
        self._note = ""
        self._label = ""
        self._step_wall_start = 0.0
        self._lock = threading.Lock()
        self._ticker: _Ticker | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def total(self) -> float:
        return round(self.elapsed(), 3)

    def set_plan(self, plan: Sequence[str]) -> None:
        """The steps still to come are known once the index is open (which modalities it has)."""
        self.plan = list(plan)

    def close(self) -> None:
        """Stop the heartbeat process (also done when the last planned step ends)."""
        if self._ticker is not None:
            self._ticker.close()
            self._ticker = None

    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def _say(self, line: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            print(line, file=self._out(), flush=True)

    def _numbered(self, k: int, name: str) -> str:
        return f"step {k}/{max(len(self.plan), k)} {name}"

    def _out_of_process(self) -> bool:
        """A child can print only to the real stderr (a test's stream lives in this process)."""
        return self.stream is None and sys.stderr is sys.__stderr__ and sys.__stderr__ is not None

    def _tell(self) -> None:
        if self._ticker is not None:
            self._ticker.send({"label": self._label, "start": self._step_wall_start, "note": self._note})

    def note(self, text: str) -> None:
        """What the running step is doing now; shown on its next heartbeat line."""
        self._note = text
        self._tell()

    def record(self, name: str, seconds: float) -> None:
        """A step that ran before the plan was known (opening the index)."""
        self._done += 1
        self.timings[name] = round(seconds, 3)
        self._say(f"{self._numbered(self._done, name)} done in {seconds:.1f} s (elapsed {self.elapsed():.0f} s)")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._done += 1
        label = self._numbered(self._done, name)
        self._label, self._note, self._step_wall_start = label, "", time.time()
        self._say(f"{label} ... (elapsed {self.elapsed():.0f} s)")
        t0 = time.perf_counter()
        stop = threading.Event()
        beating = self.enabled and self.heartbeat > 0
        if beating and self._out_of_process():
            if self._ticker is None:
                self._ticker = _Ticker(self.heartbeat, self._wall_start)
            self._tell()
            beating = False  # the child beats

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                self._say(beat_line(label, self._note, time.perf_counter() - t0, self.elapsed()))

        ticker = threading.Thread(target=beat, name=f"progress {name}", daemon=True)
        if beating:
            ticker.start()
        try:
            yield
        finally:
            stop.set()
            if ticker.is_alive():
                ticker.join()
            self._label = ""
            self._tell()
        seconds = time.perf_counter() - t0
        self.timings[name] = round(seconds, 3)
        self._say(f"{label} done in {seconds:.1f} s (elapsed {self.elapsed():.0f} s)")
        if self._done >= len(self.plan):
            self.close()


def _ticker_main(heartbeat: float, run_start: float, source: IO[str], out: TextIO) -> None:
    """The child: print the current step's heartbeat every `heartbeat` s until `source` ends."""
    state: dict = {"label": "", "start": 0.0, "note": ""}
    last = [time.time()]
    lock = threading.Lock()
    ended = threading.Event()

    def read() -> None:
        for line in source:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with lock:
                if message.get("label") != state["label"]:
                    last[0] = time.time()  # a new step (or none): its own start line was just printed
                state.update(message)
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    while not ended.wait(min(0.5, heartbeat)):
        with lock:
            now = time.time()
            if state["label"] and now - last[0] >= heartbeat:
                line = beat_line(str(state["label"]), str(state["note"]), now - float(state["start"]), now - run_start)
                print(line, file=out, flush=True)
                last[0] = now


if __name__ == "__main__":
    _ticker_main(float(sys.argv[1]), float(sys.argv[2]), sys.stdin, sys.stderr)
