"""gradwatch's version, below everything that writes it (report files) and the front door."""

__all__ = ["__version__"]

__version__ = "0.3.0"
