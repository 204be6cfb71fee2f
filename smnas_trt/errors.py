"""User-facing errors. Each message is one line that names what is wrong (field, file, device).

The CLI prints these without a traceback and exits non-zero; anything else is a bug.
"""

import errno


class SmnasError(Exception):
    """Base class for errors caused by the user's input or environment."""


class ArchError(SmnasError, ValueError):
    """A malformed or out-of-space architecture string or gene."""


class ConfigError(SmnasError, ValueError):
    """A bad field in a YAML config."""


class DataError(SmnasError):
    """A missing, truncated or inconsistent dataset."""


class ProfilingError(SmnasError):
    """Export, backend or latency-table problems."""


class BackendUnavailableError(ProfilingError):
    """The requested backend cannot run here (library or device missing)."""


class ForeignDeviceError(ProfilingError):
    """A table or predictor measured on another device/backend fingerprint."""


class PredictorError(SmnasError):
    """Latency predictor problems (schema, fingerprint, files)."""


class SearchError(SmnasError):
    """Search config or run-directory problems."""


class DeployError(SmnasError):
    """Deployment, verification or runtime problems."""


class StorageError(SmnasError):
    """A file could not be written (disk full, file size limit); the previous file is kept."""


# write() failures that mean "no room": a full disk, a quota, a file size limit (RLIMIT_FSIZE).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def disk_full_line(error: OSError) -> str:
    """A no-room OSError as one line naming the file when the error knows it."""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}cannot write: {error.strerror or type(error).__name__} (disk full or file size limit)"


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one line: its message's first line, or its type when it has none.

    Our own errors are one line already; other libraries' messages get their type in front."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, SmnasError):
        return text or type(error).__name__
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__)[:limit]


def short_repr(value: object, limit: int = 60) -> str:
    """repr() cut to `limit` characters: messages that echo input stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
