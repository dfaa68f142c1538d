"""The tilesegd error tree.

Every error tilesegd raises on purpose derives from :class:`TilesegdError`; each leaf is also a
standard exception (``ValueError``, ``OSError``...) so callers that catch those keep working.
Every message says what was wrong, which file, and how to fix it. The CLI turns these into a
one-line message and the exit code in :data:`EXIT_CODES` (never a traceback).

Exit codes (documented in the README):

==== ==========================================================================
code meaning
==== ==========================================================================
0    every scene finished
1    a usage or configuration error, or an unexpected internal error
2    click's own usage errors (unknown option, missing argument)
3    the model file is missing, corrupt or breaks the model-file contract
4    at least one scene failed (the others finished; see run.json)
5    the output directory is locked by another run
6    an output could not be written (disk full, permissions)
75   interrupted by SIGTERM / SIGINT: rerun the same command to resume (EX_TEMPFAIL)
==== ==========================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_MODEL = 3
EXIT_SCENES_FAILED = 4
EXIT_LOCKED = 5
EXIT_OUTPUT = 6
EXIT_INTERRUPTED = 75


class TilesegdError(Exception):
    """Root of every error tilesegd raises on purpose.

    Attributes:
        exit_code: the process exit code the CLI uses for this error.
    """

    exit_code: int = EXIT_USAGE


class ConfigError(TilesegdError, ValueError):
    """A configuration file or option is invalid (bad key, type or range)."""


class ModelFileError(TilesegdError, ValueError):
    """A model file is missing, corrupt, or breaks the model-file contract."""

    exit_code = EXIT_MODEL


class InputError(TilesegdError, ValueError):
    """An input scene cannot be processed (unreadable, bad georeferencing, too large...)."""


class IncompatibleInputError(InputError):
    """A scene's band count or dtype does not fit the model (found before any inference)."""


class OutputError(TilesegdError, OSError):
    """An output could not be written (disk full, permission denied...)."""

    exit_code = EXIT_OUTPUT


class LockedError(TilesegdError, OSError):
    """Another run holds the lock on the output directory."""

    exit_code = EXIT_LOCKED


class DatasetError(TilesegdError, ValueError):
    """A training / evaluation dataset is malformed (unmatched pairs, unknown mask values)."""


class DeviceError(TilesegdError, RuntimeError):
    """The requested device or precision is not available on this machine."""


class Interrupted(TilesegdError):
    """The run was stopped by SIGTERM / SIGINT; finished work is kept, rerun to resume."""

    exit_code = EXIT_INTERRUPTED
