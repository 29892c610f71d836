"""tfkd's version, in a module of its own: the package and its modules read
it without importing `tfkd` (no import cycle)."""

__version__ = "0.2.0"
