"""flipnet's error types: every user-facing failure is one of these, with a message that names
the file and the problem. The CLI prints them as one line and never shows a traceback."""

from __future__ import annotations


class FlipnetError(Exception):
    """Base class of every error flipnet raises on purpose."""


class ImageReadError(FlipnetError):
    """An input file could not be read as an image (corrupt, truncated, empty, too large...)."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OutputPathError(FlipnetError):
    """An output path is unusable: it equals an input, or its folder cannot be written."""


class WeightsError(FlipnetError):
    """A weights folder is missing, truncated, tampered with, or does not match its config."""


class ConfigError(FlipnetError):
    """A configuration file or value is invalid."""


class NoFaceError(FlipnetError):
    """No face was found where one was required."""
