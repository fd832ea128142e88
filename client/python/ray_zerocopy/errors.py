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


ZerocopyError = ZeroCopyError  # the spelling of early previews
