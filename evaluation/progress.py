"""Progress of a long run on stderr: "step k/N name ... (elapsed s)", with a heartbeat.

The report runs for minutes and some steps (cross-validation, t-SNE) for a minute or
more; a reader watching the terminal should never wonder whether it hangs. Every step
prints a line when it starts and when it ends, and a background thread prints one more
line every `heartbeat` seconds while a step runs (with the step's latest note, e.g. the
fold seed it is on). Timings are kept for metrics.json whether or not lines are printed.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

HEARTBEAT_SECONDS = 15.0


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
        self._done = 0
        self._note = ""
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def total(self) -> float:
        return round(self.elapsed(), 3)

    def set_plan(self, plan: Sequence[str]) -> None:
        """The steps still to come are known once the index is open (which modalities it has)."""
        self.plan = list(plan)

    def _say(self, line: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            print(line, file=self.stream or sys.stderr, flush=True)

    def _label(self, k: int, name: str) -> str:
        return f"step {k}/{max(len(self.plan), k)} {name}"

    def note(self, text: str) -> None:
        """What the running step is doing now; shown on its next heartbeat line."""
        self._note = text

    def record(self, name: str, seconds: float) -> None:
        """A step that ran before the plan was known (opening the index)."""
        self._done += 1
        self.timings[name] = round(seconds, 3)
        self._say(f"{self._label(self._done, name)} done in {seconds:.1f} s (elapsed {self.elapsed():.0f} s)")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._done += 1
        label = self._label(self._done, name)
        self._note = ""
        self._say(f"{label} ... (elapsed {self.elapsed():.0f} s)")
        t0 = time.perf_counter()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                note = f" {self._note}," if self._note else ""
                self._say(
                    f"{label} ...{note} {time.perf_counter() - t0:.0f} s in this step (elapsed {self.elapsed():.0f} s)"
                )

        ticker = threading.Thread(target=beat, name=f"progress {name}", daemon=True)
        if self.enabled and self.heartbeat > 0:
            ticker.start()
        try:
            yield
        finally:
            stop.set()
            if ticker.is_alive():
                ticker.join()
        seconds = time.perf_counter() - t0
        self.timings[name] = round(seconds, 3)
        self._say(f"{label} done in {seconds:.1f} s (elapsed {self.elapsed():.0f} s)")
