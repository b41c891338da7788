"""The few exceptions kernelcli raises on purpose.

The library raises these; the CLI turns them into messages and exit codes in one place.
Anything else that escapes is a bug and is allowed to show its traceback.
"""


class KernelcliError(Exception):
    """Base class: a failure a user can act on. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(KernelcliError):
    """Bad options or configuration, found before any work (exit 2)."""

    exit_code = 2


class KernelFileError(UsageError):
    """A kernel library file (YAML) or inline kernel spec is invalid."""


class UnknownKernelError(UsageError):
    """A kernel name that is in no loaded library."""


class DeviceError(UsageError):
    """The requested compute device is not available."""


class ImageError(KernelcliError):
    """An input could not be read or an output could not be written (exit 1)."""


class WriteError(ImageError):
    """The destination failed (disk full, read-only, no permission): a batch stops (exit 1)."""
