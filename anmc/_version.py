"""The one place anmc's version is written (the emitters stamp it into generated source)."""

__version__ = "0.1.0"
