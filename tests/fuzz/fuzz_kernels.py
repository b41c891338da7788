"""Coverage-guided fuzzing of the kernel-file parser with atheris: only KernelFileError may
escape, and every kernel it returns has a finite, non-empty matrix.

    pip install atheris
    python tests/fuzz/fuzz_kernels.py -max_total_time=600
"""

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from kernelcli.errors import KernelFileError
    from kernelcli.kernels.library import load_file

PATH = os.path.join(tempfile.mkdtemp(), "k.yaml")


def test_one(data: bytes) -> None:
    with open(PATH, "wb") as fh:
        fh.write(data)
    try:
        kernels = load_file(PATH)
    except KernelFileError:
        return
    for k in kernels:
        if k.kind == "plain":
            w = k.weights
            assert w.size and all(abs(v) != float("inf") and v == v for v in w.ravel())


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
