"""Coverage-guided fuzzing of the image reader with atheris: only ImageError may escape.

    pip install atheris
    python tests/fuzz/fuzz_reader.py -max_total_time=600 tests/fuzz/corpus-images

A crash is written as crash-*; add it to tests/test_hardening.py as a regression input.
"""

import io
import sys
import warnings

import atheris

with atheris.instrument_imports():
    from PIL import Image

    from kernelcli.errors import ImageError
    from kernelcli.io.images import Limits, read

LIMITS = Limits(max_pixels=4_000_000)


def test_one(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read("fuzz", data, LIMITS)
        except ImageError:
            pass


def seeds(folder: str) -> None:
    import os

    os.makedirs(folder, exist_ok=True)
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "L"), ("WEBP", "RGB")):
        buf = io.BytesIO()
        Image.new(mode, (6, 5), 1).save(buf, format=fmt)
        with open(os.path.join(folder, f"seed.{fmt.lower()}"), "wb") as fh:
            fh.write(buf.getvalue())


if __name__ == "__main__":
    folders = [a for a in sys.argv[1:] if not a.startswith("-")]
    for folder in folders:
        seeds(folder)
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
