"""The few exceptions kernelcli raises on purpose.

The library raises these; the CLI turns them into messages and exit codes in one place.
Anything else that escapes is a bug and is allowed to show its traceback.
"""


class KernelcliError(Exception):
    """Base class: a failure a user can act on. ``exit_code`` is what the CLI exits with.

    The message describes the problem, never a command-line flag. ``setting`` names the library
    setting (a keyword argument such as ``"max_kernel"`` or ``"overwrite"``) that lets the call
    through; the CLI turns it into the flag that does so.
    """

    exit_code = 1

    def __init__(self, *args, setting: str | None = None):
        super().__init__(*args)
        self.setting = setting


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
