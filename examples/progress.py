"""What a training run prints: one line per run, or one line per epoch.

Two Keras callbacks (Keras 3 and tf_keras alike) that replace Keras' own
output (`fit(verbose=0)`); `examples.training.fit` adds them:

- `ProgressLine`: one line per run, `seed 0: epoch 12/60, loss 0.31, ...`,
  rewritten in place on a terminal; in a log only the run's last line.
- `EpochLine`: one line per epoch, `epoch 3/60: loss 0.311, val_loss 0.48`,
  optionally recorded in a JSON-lines file.
"""

import json
import shutil
import sys
import time

from tfkd import keras

# Logs of the frozen teacher (`val_teacher_accuracy`, ...): the same after
# every epoch of every run that it teaches.
TEACHER_METRIC = "teacher_"
# First on a run's line (a terminal may cut the end); then the others, in
# alphabetical order (Keras 3 and tf_keras order their logs differently).
_FIRST = ("loss", "accuracy", "val_loss", "val_accuracy")


def _values(logs, keys):
    return ", ".join(f"{key} {logs[key]:.4g}" for key in keys)


class ProgressLine(keras.callbacks.Callback):
    """One line per run, with the epoch and the current metrics.

    `seed 0: epoch 12/60, loss 0.3104, accuracy 0.9113, val_loss 0.3562,
    val_accuracy 0.9, ...`. On a terminal the line is rewritten in place
    (`\\r`, cut to the terminal's width) after every epoch and printed in
    full when the run ends; elsewhere (a pipe, a log file) only the run's
    final line is printed, when it ends, so logs stay short.

    The frozen teacher's metrics (names with `teacher_`) are the same in
    every epoch: they are left out of the line and printed once, on a line
    of their own (`teacher (frozen): val_teacher_accuracy 0.97, ...`), by
    the first run that logs them. Runs that share `shown` print them once
    in all.

    Args:
        label: what the run is, the line's start.
        shown: a set of the teacher metrics already printed, shared by the
            runs of a script. Default: a new one (each run prints them).
        stream: where to print. Default: `sys.stdout` when printing.
    """

    def __init__(self, label, *, shown=None, stream=None):
        super().__init__()
        self.label = label
        self.shown = set() if shown is None else shown
        self._stream = stream
        self._line = ""
        self._width = 0  # Of the line on the terminal; 0: none there.

    @property
    def stream(self):
        return self._stream or sys.stdout

    def _in_place(self):
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def _print(self, text):
        """A line of its own, below the run's line if one is showing."""
        if self._width:
            text = "\r" + text.ljust(self._width)
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def on_train_begin(self, logs=None):
        self._line, self._width = "", 0

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: float(value) for key, value in (logs or {}).items()}
        teacher = [key for key in logs if TEACHER_METRIC in key]
        new = sorted(set(teacher) - self.shown)
        if new:
            self._print(f"teacher (frozen): {_values(logs, new)}")
            self.shown.update(new)
        epochs = self.params.get("epochs") if self.params else None
        progress = f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else "")
        keys = [key for key in _FIRST if key in logs]
        keys += sorted(set(logs) - set(teacher) - set(keys))
        values = f", {_values(logs, keys)}" if keys else ""
        self._line = f"{self.label}: {progress}{values}"
        if self._in_place():
            # `\r` returns to the start of the last row: a line must fit.
            width = shutil.get_terminal_size().columns - 1
            line = self._line[:width]
            self.stream.write("\r" + line.ljust(self._width))
            self.stream.flush()
            self._width = len(line)

    def on_train_end(self, logs=None):
        if self._line:  # In full, over the terminal's cut one.
            self._print(self._line)


class EpochLine(keras.callbacks.Callback):
    """Prints one line per epoch: `epoch 3/60: loss 0.311, val_loss 0.48`.

    Keras' `verbose=2` prints two (an "Epoch 3/60" header and the logs).
    With `path`, the line also gives the learning rate and the epoch's
    seconds, and its record is appended to that JSON-lines file (which
    keeps every epoch of a resumed run).
    """

    def __init__(self, epochs, path=None):
        super().__init__()
        self.epochs = epochs
        self.path = path

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.time()

    def on_epoch_end(self, epoch, logs=None):
        record = {k: float(v) for k, v in (logs or {}).items()}
        if self.path:
            rate = self.model.optimizer.learning_rate
            record["learning_rate"] = float(keras.ops.convert_to_numpy(rate))
            record["seconds"] = time.time() - self._began
            with open(self.path, "a") as f:
                f.write(json.dumps({"epoch": epoch + 1, **record}) + "\n")
        values = _values(record, record)
        print(f"epoch {epoch + 1}/{self.epochs}: {values}", flush=True)
