"""Progress bars (fastprogress) and the epoch table: HTML in notebooks, plain lines in terminals; in notebooks a live
graph of the losses and the learning rate under the bar.

In a notebook each fit leaves exactly one output of its own: the table (its bars removed at the end), and with the
graph one figure. The master bar's display is opened by its first `update`, never beforehand, so no empty bar is
left behind."""

from __future__ import annotations

import functools
import math
import shutil
import sys

from ..data.core import loader_length
from .core import ORDER, Callback


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
    `show_graph` (notebooks only; never in terminals, nor for an LR-finder sweep) redraws train and valid loss, and
    the lr on a second axis, under the bar after each epoch: one figure per fit.
    """

    order = ORDER.progress

    def __init__(self, show_table: bool = True, show_bars: bool | None = None, show_graph: bool = True):
        self.show_table = show_table
        self.show_bars = show_bars
        self.show_graph = show_graph
        self.master = None
        self.child = None
        self._graph = False

    def _bars_wanted(self) -> bool:
        # In a log file (CI, `> out.txt`) a redrawn bar becomes one endless line: keep only the table there.
        if self.show_bars is not None:
            return self.show_bars
        from fastprogress.fastprogress import IN_NOTEBOOK

        return IN_NOTEBOOK or sys.stdout.isatty()

    def before_fit(self, learn):
        # Imported here so `import cyclr` stays fast for users who never show a bar.
        from fastprogress.fastprogress import IN_NOTEBOOK

        from .lr_finder import LRFinderCallback

        self._header_written = False
        self.bars = self._bars_wanted()
        if not self.bars:
            return
        # Not started here: the first update() opens the bar's display (starting it here too left an empty one).
        self.master = _master_bar(range(learn.n_epoch))
        sweep = any(isinstance(cb, LRFinderCallback) for cb in learn.cbs)
        self._graph = self.show_graph and IN_NOTEBOOK and not sweep
        if self._graph:
            self.master.names = ["train_loss", "valid_loss"]

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
        if self._graph and self.master is not None:
            self._draw_graph(learn)  # after the Recorder (50), which has turned the epoch's losses into rows
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

    def _draw_graph(self, learn):
        recorder = learn.recorder
        rows = recorder.history.numpy("fit") == recorder.fit_index  # read by column: no dict per row
        epochs = [r for r in recorder.epoch_rows if r["fit"] == recorder.fit_index]
        if not rows.any():
            return
        steps = recorder.history.numpy("train_iter")[rows].tolist()
        per_epoch = learn.n_train_iters / max(learn.n_epoch, 1)
        valid = [((r["epoch"] + 1) * per_epoch - 1, r["valid_loss"]) for r in epochs if not math.isnan(r["valid_loss"])]
        losses = recorder.history.numpy("loss")[rows].tolist()
        graphs = [(steps, losses), ([v[0] for v in valid], [v[1] for v in valid])]
        self.master.update_graph(graphs, x_bounds=(0, max(learn.n_train_iters - 1, 1)))
        ax = self.master.graph_ax
        if not hasattr(self, "_lr_ax") or self._lr_ax.figure is not ax.figure:
            self._lr_ax = ax.twinx()
        self._lr_ax.clear()
        self._lr_ax.plot(steps, recorder.history.numpy("lr")[rows].tolist(), color="tab:green", alpha=0.6, label="lr")
        self._lr_ax.set_ylabel("lr")
        self._lr_ax.legend(loc="upper center")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        self.master.graph_out.update(ax.figure)  # once more, now with the lr

    def _start_child(self, learn):
        if not getattr(self, "bars", self._bars_wanted()):
            return
        n = loader_length(learn.dl) or (getattr(learn, "steps_per_epoch", 0) if learn.training else 0)
        if not n:  # a stream of unknown length: no bar to fill (the epoch table still shows each epoch)
            return
        if self.master is None:  # validate() outside fit: a bar of its own
            self.child = _progress_bar(range(n), leave=False)
        else:
            self.child = self.master.pcls(range(n), parent=self.master, leave=False)
        self.child.update(0)  # opens its display: starting it before as well left a second, empty bar

    def _end_child(self):
        if self.child is not None:
            self.child.on_iter_end()
            self.child = None

    def _close(self):
        self._end_child()
        if self.master is not None:
            master, self.master = self.master, None
            master.on_iter_end()  # in a notebook: the bars give way to the table
            figure = getattr(master, "graph_fig", None)
            if figure is not None:
                import matplotlib.pyplot as plt

                plt.close(figure)  # its last state is in the output already; closed, the cell shows it only once


def _master_bar(gen):
    from fastprogress.fastprogress import IN_NOTEBOOK, NBMasterBar

    return NBMasterBar(gen) if IN_NOTEBOOK else _console_master_bar(gen)


def _progress_bar(gen, **kwargs):
    from fastprogress.fastprogress import IN_NOTEBOOK, NBProgressBar

    return NBProgressBar(gen, **kwargs) if IN_NOTEBOOK else _console_bar_class()(gen, **kwargs)


@functools.cache
def _console_bar_class():
    """fastprogress's terminal bar, without the fill character its constructor prints to probe the terminal's
    encoding (that character stayed on screen, before the first bar); the encoding is asked instead."""
    from fastprogress.fastprogress import MAX_COLS, ConsoleProgressBar, ProgressBar

    class ConsoleBar(ConsoleProgressBar):
        def __init__(self, gen, total=None, display=True, leave=True, parent=None, master=None, txt_len=60):
            self.cols = min(shutil.get_terminal_size((100, 40)).columns, MAX_COLS)
            self.length, self.max_len, self.prefix = self.cols - txt_len, 0, ""
            self.fill = self.fill if _encodes(self.fill) else "X"
            ProgressBar.__init__(self, gen, total, display, leave, parent, master)

    return ConsoleBar


def _console_master_bar(gen):
    return _console_master_class()(gen)


@functools.cache
def _console_master_class():
    from fastprogress.fastprogress import ConsoleMasterBar, MasterBar

    bar_class = _console_bar_class()

    class ConsoleMaster(ConsoleMasterBar):
        pcls = bar_class

        def __init__(self, gen):
            MasterBar.__init__(self, gen, bar_class)  # its main bar a ConsoleBar too: no probe character
            self.total_time = False

    return ConsoleMaster


def _encodes(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
