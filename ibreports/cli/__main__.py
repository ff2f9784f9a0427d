"""``python -m ibreports.cli``: the same command as the installed ``ibreports``."""

from . import run

run()
