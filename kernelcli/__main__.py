import sys

try:
    from .cli import entry
except KeyboardInterrupt:  # Ctrl-C while Python is still loading kernelcli
    sys.exit(130)

entry()
