"""Exceptions raised by ray_zerocopy. Each carries the daemon's status code.

    ZeroCopyError                 anything the daemon or client refused
    ├── DaemonUnavailableError    (also ConnectionError) zerocopyd not reachable
    ├── ModelNotFoundError        (also KeyError) no model by that name/digest
    ├── InvalidModelError         (also ValueError) a bad manifest, name or file
    ├── OutOfSpaceError           (also MemoryError) budget or tmpfs full
    ├── PermissionDeniedError     (also PermissionError) an admin-only call
    ├── CorruptModelError         the bytes no longer match their digest
    ├── AlreadyExistsError        the model is already here, or another process
    │                             of this node is bringing it (cluster pulls)
    ├── FailedPreconditionError   the call does not fit the state it met (a
    │                             session that ended, a GPU not seen)
    └── GpuSharingUnavailableError  no shared device copy: the daemon has no
                                  GPU support or does not see the GPU, or
                                  this process does not
"""


class ZeroCopyError(Exception):
    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # survive pickling across Ray tasks
        return (type(self), (self.message, self.code))


class DaemonUnavailableError(ZeroCopyError, ConnectionError):
    pass


class ModelNotFoundError(ZeroCopyError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class InvalidModelError(ZeroCopyError, ValueError):
    pass


class OutOfSpaceError(ZeroCopyError, MemoryError):
    pass


class PermissionDeniedError(ZeroCopyError, PermissionError):
    pass


class CorruptModelError(ZeroCopyError):
    pass


class GpuSharingUnavailableError(ZeroCopyError):
    pass


class AlreadyExistsError(ZeroCopyError):
    pass


class FailedPreconditionError(ZeroCopyError):
    pass


ZerocopyError = ZeroCopyError  # the spelling of early previews

# The daemon's (and client's) status codes, by name, and the class each
# raises; any other code raises ZeroCopyError. The extension raises through
# from_status.
_BY_CODE = {
    "NOT_FOUND": ModelNotFoundError,
    "UNAVAILABLE": DaemonUnavailableError,
    "INVALID_ARGUMENT": InvalidModelError,
    "OUT_OF_RANGE": InvalidModelError,
    "RESOURCE_EXHAUSTED": OutOfSpaceError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "DATA_LOSS": CorruptModelError,
    "ALREADY_EXISTS": AlreadyExistsError,
    "FAILED_PRECONDITION": FailedPreconditionError,
}


def from_status(code: str, message: str) -> ZeroCopyError:
    """The exception for a status code (its name, e.g. "NOT_FOUND")."""
    return _BY_CODE.get(code, ZeroCopyError)(message, code)
