"""One progress display for long work (epochs, probes, studies).

On a terminal, :class:`Progress` redraws one line (at most every
``interval`` seconds): ``label [=====>    ] 37/121 <text> (31%) 12 s ETA 20 s``.
Elsewhere (a log file, a pipe) it prints a plain line every
``log_interval`` seconds and one when the work is done
(``report_finish``), or nothing when ``log_interval`` is ``None``.  The first update
after a slow start (a traced step) says how long the start took, since the
screen would otherwise stay silent for minutes with no explanation.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "is_terminal"]


def is_terminal(stream) -> bool:
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


class Progress:
    """``update(done, text="")`` as work proceeds, ``finish()`` at the end."""

    def __init__(self, stream=None, label: str = "", total: int | None = None, *,
                 interval: float = 0.5, log_interval: float | None = 60.0,
                 slow_start: float | None = 20.0, width: int = 24, report_finish: bool = True):
        self.stream = sys.stderr if stream is None else stream
        self.label, self.total = label, total
        self.tty = is_terminal(self.stream)
        self.interval = interval if self.tty else log_interval
        self.slow_start, self.width, self.report_finish = slow_start, width, report_finish
        self.t0 = time.time()
        self._last = None        # time of the last line drawn
        self._first = None       # (done, time) at the first update
        self._shown = False

    def wants_update(self) -> bool:
        """Whether an update now would be drawn (skip computing its text otherwise)."""
        if self._first is None:
            return True
        return self.interval is not None and time.time() - self._last >= self.interval

    def update(self, done: int, text: str = "") -> None:
        now = time.time()
        if self._first is None:
            self._first, self._last = (done, now), now
            if self.slow_start is not None and now - self.t0 >= self.slow_start:
                self._line(f"{self.label}: first step (includes tracing) took {now - self.t0:.0f} s",
                           newline=True)
            return
        if self.interval is None:
            return
        finished = self.report_finish and bool(self.total) and done >= self.total and not self.tty
        if not finished and now - self._last < self.interval:
            return
        self._last = now
        self._line(self._text(done, text, now), newline=not self.tty)

    def _text(self, done, text, now) -> str:
        parts = [self.label] if self.label else []
        if self.total:
            frac = min(done / self.total, 1.0)
            filled = int(frac * self.width)
            if self.tty:
                parts.append("[" + "=" * filled + ">" + " " * (self.width - filled) + "]")
            parts.append(f"{done}/{self.total}")
        else:
            parts.append(str(done))
        if text:
            parts.append(text)
        if self.total:
            parts.append(f"({100 * frac:.0f}%)")
        parts.append(f"{now - self.t0:.0f} s")
        start_done, start_time = self._first
        if self.total and done > start_done:
            rate = (now - start_time) / (done - start_done)
            parts.append(f"ETA {rate * (self.total - done):.0f} s")
        return " ".join(parts)

    def _line(self, text: str, newline: bool) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(100)[:max(100, len(text))] + ("\n" if newline else ""))
            self._shown = not newline
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """Erase the live line (on a terminal); the caller prints the summary."""
        if self.tty and self._shown:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self._shown = False
