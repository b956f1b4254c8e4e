"""The one exception type users and the CLI need to know about."""

from __future__ import annotations


class SegsoftError(Exception):
    """A problem with the user's input or environment, worded for the user.

    The message is a single line that names the file (when there is one) and
    the problem; the CLI prints it as ``error: <message>`` and exits non-zero
    without a traceback.

    Examples
    --------
    >>> raise SegsoftError("photo.jpg: not an image")
    Traceback (most recent call last):
    ...
    segsoft.errors.SegsoftError: photo.jpg: not an image
    """
