"""tfkd's examples: scripts (absl flags) and the modules they share.

Run the scripts as modules from the repository root, e.g. `python -m
examples.distill --helpfull`. `models` (teacher and student builders) and
`data` (TFDS loading, offline by default) are imported by the benchmarks too;
`cli` defines the flags several scripts share, `training` holds the flag-free
steps the scripts compose.

TensorFlow's C++ logs are quiet unless `TF_CPP_MIN_LOG_LEVEL` is set: this
package is imported before any script imports TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
