"""Progress for long work: a tqdm bar on a terminal, a log line every 30 s in a log file.

A redrawn bar is the right thing on a terminal, but in a log file (a batch job, ``make demo >
log``) its carriage-return updates pile up into thousands of lines; without a TTY, progress is
logged as one line every :data:`LOG_EVERY_S` seconds and one when the work ends.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("tilesegd")
LOG_EVERY_S = 30.0


class LogProgress:
    """The subset of tqdm's interface tilesegd uses, reporting through :mod:`logging`.

    Args:
        total: amount of work (``unit``), or 0 when unknown.
        desc: what is progressing (a scene name, "epoch 3").
        unit: unit of ``total`` (``MP``, ``batch``).
        initial: work already done (a resumed scene).
        every: seconds between log lines.
    """

    def __init__(
        self,
        total: float = 0,
        desc: str = "",
        unit: str = "",
        initial: float = 0,
        every: float = LOG_EVERY_S,
        **_: Any,
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every = every
        self.t0 = self.last = time.monotonic()
        self.postfix = ""

    def update(self, n: float = 1) -> None:
        """Add ``n`` units; log a line when ``every`` seconds have passed since the last."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._log()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """Text logged after the counts (loss, rate...)."""
        self.postfix = text

    def refresh(self) -> None:
        """No-op (tqdm redraws)."""

    def _log(self) -> None:
        elapsed = time.monotonic() - self.t0
        of = f"/{self.total:.1f}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.2f} {self.unit}/s" if elapsed > 0 and self.unit else ""
        extra = f", {self.postfix}" if self.postfix else ""
        log.info("%s: %.1f%s %s%s in %.0f s%s%s", self.desc, self.n, of, self.unit, pct, elapsed,
                 rate, extra)  # fmt: skip

    def close(self) -> None:
        """Log the final line (if any work was counted and time has passed)."""
        if self.n and time.monotonic() - self.t0 >= 1.0:
            self._log()


def progress_bar(enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar when ``enabled`` and stderr is a terminal, else a :class:`LogProgress` when
    ``enabled``, else a disabled tqdm. ``kwargs`` are tqdm's (``total``, ``desc``, ``unit``,
    ``initial``...)."""
    from tqdm import tqdm

    if enabled and not sys.stderr.isatty():
        return LogProgress(**kwargs)
    return tqdm(disable=not enabled, **kwargs)
