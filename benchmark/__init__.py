"""unlearnable-bench: does an unlearnable-data poison survive a defense? One command, one number."""

__version__ = "0.1.0"
