"""tfkd's benchmarks: scripts whose results the README and docs/ quote.

Run them as modules from the repository root, e.g. `python -m
benchmarks.defaults --helpfull`; each writes its tables to
`benchmarks/results/` (see docs/benchmarks.md). They share the examples'
flags, models and data (`examples.cli`, `examples.models`, `examples.data`);
`strong_teachers` holds the benchmark teachers. As the examples, each script
defines its flags in `define_flags(flag_values)`, called only when it runs
(tests parse a command line in-process with a new `flags.FlagValues`).

TensorFlow's C++ logs are quiet unless `TF_CPP_MIN_LOG_LEVEL` is set: this
package is imported before any script imports TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
