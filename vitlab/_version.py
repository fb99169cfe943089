"""The package version, in the one place every module takes it from (the facade re-exports it)."""
__version__ = "0.1.0"
