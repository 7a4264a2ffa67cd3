"""train.py, the command-line trainer: ``command`` (its arguments and its run), ``runs`` (run folders), ``plots``.

Importing it imports none of them (nor NumPy): :func:`main` does, inside its Ctrl-C guard.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # as in xpmlp/__init__.py: no typing before the Ctrl-C guard
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from .command import run


def interrupted_while_starting(prog: str, terminated: bool = False) -> NoReturn:
    """Ctrl-C (or SIGTERM) while train.py starts: one line on stderr, exit 130 (143; ``command.INTERRUPTED``)."""
    print(f"\n{prog}: {'terminated' if terminated else 'interrupted'} while starting; nothing was read or written",
          file=sys.stderr)  # fmt: skip
    raise SystemExit(143 if terminated else 130) from None


class starting:
    """The start-up's imports under a Ctrl-C: a KeyboardInterrupt, and an ImportError raised after a SIGINT came
    (a C extension may turn the KeyboardInterrupt raised inside its own import into one: NumPy's does, as it
    imports ``datetime``), leave as a KeyboardInterrupt. SIGINT's handler is the one it was, and again afterwards."""

    def __enter__(self) -> None:
        import signal  # (loaded long before)

        self.came, self.previous = False, signal.getsignal(signal.SIGINT)
        self.installed = callable(self.previous)
        if self.installed:
            try:
                signal.signal(signal.SIGINT, self.note)
            except ValueError:  # not the main thread: signals go elsewhere
                self.installed = False

    def note(self, signum: int, frame: Any) -> None:
        self.came = True
        self.previous(signum, frame)

    def __exit__(self, kind: type | None, exc: BaseException | None, traceback: Any) -> None:
        if self.installed:
            import signal

            signal.signal(signal.SIGINT, self.previous)
        if kind is not None and issubclass(kind, ImportError) and self.came:
            raise KeyboardInterrupt from exc


def interrupt_again(unraisable: Any) -> None:
    """``sys.unraisablehook`` for train.py and ``xpmlp info``: a Ctrl-C that Python could only print (raised in
    a gc callback or a ``__del__``: JAX's gc callback, as JAX is imported, is where one often lands) is sent
    again, as a new SIGINT (SIGTERM where SIGINT is ignored and SIGTERM is Ctrl-C), so it is not lost."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        import _thread
        import signal  # (loaded long before: no Ctrl-C comes before the hook is in place)

        for signum in (signal.SIGINT, signal.SIGTERM):
            if callable(signal.getsignal(signum)):
                _thread.start_new_thread(_thread.interrupt_main, (signum,))  # from here, it would be raised here
                return
    sys.__unraisablehook__(unraisable)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The console entry point: run train.py and return its exit status (0; mistakes exit 2, Ctrl-C 130).

    Its messages name ``prog``; default: the program run (``train.py``, ``xpmlp-train``), or
    ``train.py`` when ``argv`` is given.
    """
    if sys.stderr is None:  # started with stderr closed (2>&-): the bar and the messages go nowhere, not the run
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open for the rest of the process)
    prog = prog or (os.path.basename(sys.argv[0]) if argv is None and sys.argv[0] else "train.py")
    sys.unraisablehook = interrupt_again
    try:
        with starting():
            from .command import run  # NumPy and xpmlp's modules: most of the start-up
    except KeyboardInterrupt:
        interrupted_while_starting(prog)
    try:
        run(argv, prog)
    except SystemExit as exc:
        from .parallel import leave  # imported with .command

        leave(exc.code)  # one of several JAX processes ends at once (JAX's shutdown would wait for the others)
        raise
    return 0


def __getattr__(name: str) -> Any:
    """``run``, imported on first use."""
    if name == "run":
        from .command import run

        return run
    raise AttributeError(f"module 'xpmlp.cli' has no attribute {name!r}")


__all__ = ["main", "run"]
