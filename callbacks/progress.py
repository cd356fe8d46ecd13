"""Progress bars (fastprogress) and the epoch table: HTML in notebooks, plain lines in terminals."""

from __future__ import annotations

import math
import sys

from .core import Callback


def _format(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "#na#"
        return f"{value:.6f}"
    return str(value)


def _format_time(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes:02d}:{secs:02d}"


class ProgressCallback(Callback):
    """A master bar over epochs, a child bar over the batches of each phase, and the epoch table underneath.

    `show_table=False` keeps the bars without the table; `learn.no_bar()` removes the whole callback for a block.
    """

    order = 60

    def __init__(self, show_table: bool = True, show_bars: bool | None = None):
        self.show_table = show_table
        self.show_bars = show_bars
        self.master = None
        self.child = None

    def _bars_wanted(self) -> bool:
        # In a log file (CI, `> out.txt`) a redrawn bar becomes one endless line: keep only the table there.
        if self.show_bars is not None:
            return self.show_bars
        from fastprogress.fastprogress import IN_NOTEBOOK

        return IN_NOTEBOOK or sys.stdout.isatty()

    def before_fit(self, learn):
        # Imported here so `import learner` stays fast for users who never show a bar.
        from fastprogress.fastprogress import master_bar

        self._header_written = False
        self.bars = self._bars_wanted()
        if not self.bars:
            return
        self.master = master_bar(range(learn.n_epoch))
        self.master.on_iter_begin()

    def before_epoch(self, learn):
        if self.master is not None:
            self.master.update(learn.epoch)

    def before_train(self, learn):
        self._start_child(learn)

    def before_validate(self, learn):
        self._start_child(learn)

    def after_batch(self, learn):
        if self.child is not None:
            self.child.update(learn.iter + 1)

    def after_train(self, learn):
        self._end_child()

    def after_validate(self, learn):
        self._end_child()

    def after_epoch(self, learn):
        if not self.show_table:
            return
        row = learn.recorder.epoch_rows[-1]
        names = [k for k in row if k != "fit"]
        values = [_format_time(row[k]) if k == "time" else _format(row[k]) for k in names]
        if not self._header_written:
            self._write(names)
            self._header_written = True
        self._write(values)

    def _write(self, cells: list[str]) -> None:
        if self.master is not None:
            self.master.write(cells, table=True)
        else:
            print("  ".join(f"{c:<{max(len(c), 10)}}" for c in cells), flush=True)

    def after_fit(self, learn):
        self._close()

    def cleanup_fit(self, learn):
        # Also reached after an exception or KeyboardInterrupt: leave no half-drawn bar behind.
        self._close()

    def _start_child(self, learn):
        from fastprogress.fastprogress import progress_bar

        if not getattr(self, "bars", self._bars_wanted()):
            return
        if self.master is None:  # validate() outside fit: a bar of its own
            self.child = progress_bar(range(len(learn.dl)), leave=False)
        else:
            self.child = progress_bar(range(len(learn.dl)), parent=self.master, leave=False)
        self.child.on_iter_begin()
        self.child.update(0)

    def _end_child(self):
        if self.child is not None:
            self.child.on_iter_end()
            self.child = None

    def _close(self):
        self._end_child()
        if self.master is not None:
            self.master.on_iter_end()
            self.master = None
