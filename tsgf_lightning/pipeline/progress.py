"""One stage's line on the console: its head, its own progress bar while it runs, and how it ended."""

from __future__ import annotations

import codecs
import re
import shutil
import sys


class StageProgress:
    """``[i/n] stage ...`` now and `` done in 21s: top1 0.41`` at the end, on one line.

    On a terminal the stage's own tqdm bar (the last bar line of its output, escape codes
    stripped) is shown after the head while it runs; elsewhere (logs, CI) only the two halves are.
    """

    _BAR = re.compile(r"\d+%\||\d+/\d+ \[|\d+it \[")
    _ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def __init__(self, head: str, bar: bool | None = None):
        self.head, self.bar = head, sys.stdout.isatty() if bar is None else bar
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        print(head, end="", flush=True)

    def feed(self, chunk: bytes) -> None:
        """More of the stage's output; the newest complete bar line, if any, replaces the shown one."""
        if not self.bar:
            return
        *segments, self._pending = re.split(r"[\r\n]", self._pending + self._decoder.decode(chunk))
        self._pending = self._pending[-4096:]
        bars = [s for s in (self._ANSI.sub("", s).strip() for s in segments) if self._BAR.search(s)]
        if bars:
            width = shutil.get_terminal_size().columns
            sys.stdout.write(f"\r{self.head} {bars[-1]}"[:width] + "\x1b[K")
            sys.stdout.flush()

    def finish(self, text: str) -> None:
        """End the line with ``text`` (the bar, if shown, is cleared first)."""
        if self.bar:
            sys.stdout.write(f"\r{self.head}\x1b[K")
        print(f" {text}", flush=True)
