"""The header of every report that a script writes: command, machine, date.

The benchmarks (and `examples.pipeline`) record `header()` in their JSON
results and open their Markdown report with `markdown(header)`:

    Command: `python -m benchmarks.step_cost --rounds=3`

    Machine: x86_64, 2 CPU cores, no GPU; Python 3.11.7, tensorflow 2.21.0,
    keras 3.15.1; 2026-12-02; 65 s.

`describe(header)` is the machine line alone, for reports that hold several
runs (one line per data set or per teacher).
"""

import datetime
import fcntl
import json
import os
import platform
import sys
import tempfile

import tensorflow as tf

import tfkd
from tfkd import keras


def command(module=None, argv=None):
    """The command that runs this script again, e.g. `python -m
    benchmarks.qat --seeds=1`.

    Args:
        module: the script's module name. Default: `__main__`'s, the module
            that `python -m` ran.
        argv: its arguments. Default: `sys.argv[1:]`.
    """
    if module is None:
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec else os.path.basename(sys.argv[0])
    argv = sys.argv[1:] if argv is None else argv
    return " ".join([f"python -m {module}", *argv])


def machine():
    """The processor, its cores, the GPUs and the versions that matter:
    `x86_64, 2 CPU cores, no GPU; Python 3.11.7, tensorflow 2.21.0, keras
    3.15.1` (`tf_keras 2.21.0` under `TF_USE_LEGACY_KERAS=1`)."""
    gpus = tf.config.list_physical_devices("GPU")
    names = sorted(
        {
            tf.config.experimental.get_device_details(gpu).get(
                "device_name", "GPU"
            )
            for gpu in gpus
        }
    )
    gpu = f"{len(gpus)} GPU ({', '.join(names)})" if gpus else "no GPU"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; Python "
        f"{platform.python_version()}, tensorflow {tf.__version__}, "
        f"{tfkd.KERAS_NAME} {keras.__version__}"
    )


def header(module=None, argv=None):
    """`{"command", "machine", "date"}` of this run (`command`, `machine`,
    today's UTC date)."""
    today = datetime.datetime.now(datetime.timezone.utc).date()
    return {
        "command": command(module, argv),
        "machine": machine(),
        "date": today.isoformat(),
    }


def describe(header, seconds=None):
    """`<machine>; <date>; <seconds> s`: what ran where, on one line.

    Keys missing from `header` (results written before the date was
    recorded) are left out.
    """
    parts = [header["machine"], header.get("date")]
    if seconds is not None:
        parts.append(f"{seconds:.0f} s")
    return "; ".join(part for part in parts if part)


def markdown(header, seconds=None):
    """The report's first lines: the command, then the machine and date."""
    return [
        f"Command: `{header['command']}`",
        "",
        f"Machine: {describe(header, seconds)}.",
    ]


def update_results(path, update, markdown):
    """Applies `update(results) -> results` to the `"results"` of
    `path + ".json"` and rewrites `path + ".md"` with `markdown(results)`
    (a list of lines), under an exclusive lock: several benchmark processes
    may add to one results file. Returns the lines."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    lock_path = os.path.join(
        tempfile.gettempdir(), f"tfkd_{os.path.basename(path)}.lock"
    )
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = {}
        if os.path.exists(path + ".json"):
            with open(path + ".json") as f:
                results = json.load(f)["results"]
        results = update(results)
        with open(path + ".json", "w") as f:
            json.dump({"results": results}, f, indent=1)
        lines = markdown(results)
        with open(path + ".md", "w") as f:
            f.write("\n".join(lines))
    return lines
