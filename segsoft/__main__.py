"""``python -m segsoft`` is the ``segsoft`` command."""

from .cli import entry

entry()
