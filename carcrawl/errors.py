"""carcrawl's exceptions, in one place.

Errors about a URL or a page are *values* (reasons stored on rows), not exceptions. These are for
the few things that must stop the program with a clear message: bad config, bad input files, a
checkpoint that belongs to something else, a full disk.
"""

from __future__ import annotations


class CarcrawlError(Exception):
    """Base class: the CLI prints the message (no traceback) and exits with ``exit_code``."""

    exit_code = 2


class ConfigError(CarcrawlError):
    """A config file or CLI value is wrong. The message names the file and the key."""


class InputFileError(CarcrawlError):
    """A URL list, catalogue or categories table has a bad row. The message names file, line, field."""


class CheckpointError(CarcrawlError):
    """The checkpoint cannot be used (wrong schema version, not a carcrawl database)."""


class DiskFullError(CarcrawlError):
    """The output filesystem ran out of space. Everything committed so far is kept; free space and
    run the same command again to resume."""

    exit_code = 75  # EX_TEMPFAIL


class ModelUnavailableError(CarcrawlError):
    """The requested classifier weights cannot be found offline."""
