"""The command line: `dispatcher-gateway serve | sandbox | dispatch | watch | jobs | templates |
token` (or `python -m dispatcher_gateway ...`). One module per command; main.py reads the
arguments and runs the command they name."""

from .connection import TOKEN_ENV
from .main import main

__all__ = ["TOKEN_ENV", "main"]
