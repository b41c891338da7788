"""The version, in a module of its own: the package, its API and the thin client share it
without importing each other."""

__version__ = "0.1.0"
