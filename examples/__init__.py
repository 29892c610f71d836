"""tfkd's examples: scripts (absl flags) and the modules they share.

`models` (teacher and student builders) and `data` (TFDS loading, offline by
default) are imported by the benchmarks too; `training` holds the flag-free
steps the scripts compose.
"""
