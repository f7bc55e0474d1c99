"""Progress bars that suit where the output goes: a tqdm bar on a terminal, nothing from the
bars when stderr is redirected to a file or pipe (a log), so a log holds no carriage-return
flood; long loops then write one line per step of interest themselves (see
:meth:`mlpot.train.trainer.Trainer.run`, one line per epoch)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def interactive() -> bool:
    """True when stderr (where bars go) is a terminal."""
    return sys.stderr.isatty()


def bar(iterable=None, *, disable: bool = False, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled when asked or when stderr is not a terminal."""
    return tqdm(iterable, disable=disable or not interactive(), **kwargs)


def log_line(text: str) -> None:
    """One line on stderr, flushed (the redirected form of a bar's update)."""
    print(text, file=sys.stderr, flush=True)
