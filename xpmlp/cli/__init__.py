"""train.py, the command-line trainer: ``command`` (its arguments and its run), ``runs`` (run folders), ``plots``."""

from .command import main, run

__all__ = ["main", "run"]
