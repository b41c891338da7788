"""The shipped library's values, the strict YAML loader, inline specs, overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

import kernelcli
from kernelcli.errors import KernelFileError, UnknownKernelError
from kernelcli.kernels.analysis import separable_factors
from kernelcli.kernels.library import KernelLibrary, load_file, parse_inline, shipped_path

ROOT = Path(__file__).resolve().parents[1]

# Values from shared FACTS.md §2 (setosa.io, and the teaching material), typed in by hand.
EXPECTED = {
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    "blur": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16,
    "box-blur": np.ones((3, 3)) / 9,
    "gaussian-5x5": np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256,
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "unsharp-5x5": 2 * np.pad([[1]], 2) - np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256,
    "emboss": [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]],
    "outline": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
    "laplacian": [[0, -1, 0], [-1, 4, -1], [0, -1, 0]],
    "sobel-top": [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
    "sobel-bottom": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "sobel-left": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
    "sobel-right": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "prewitt-x": [[-1, 0, 1]] * 3,
    "prewitt-y": [[-1, -1, -1], [0, 0, 0], [1, 1, 1]],
    "scharr-x": [[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]],
    "scharr-y": [[-3, -10, -3], [0, 0, 0], [3, 10, 3]],
    "edge-horizontal": [[1, -1]],
    "edge-vertical": [[1], [-1]],
    "edge-diagonal": [[1, -1], [-1, 1]],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_kernel_values(library, name):
    np.testing.assert_allclose(library.get(name).weights, np.asarray(EXPECTED[name], float), atol=1e-15)


def test_every_shipped_kernel_is_documented(library):
    readme = (ROOT / "README.md").read_text()
    for k in library:
        assert k.description.strip(), k.name
        assert f"`{k.name}`" in readme, f"{k.name} missing from the README kernel table"


def test_packaged_file_is_the_repository_file():
    assert shipped_path().read_bytes() == (ROOT / "kernels.yaml").read_bytes()


def test_aliases_and_did_you_mean(library):
    assert library.get("sobel-x").name == "sobel-right"
    with pytest.raises(UnknownKernelError, match=r"unknown kernel 'blurr'; did you mean 'blur'\?"):
        library.get("blurr")


@pytest.mark.parametrize(
    "spec",
    ["0,-1,0; -1,5,-1; 0,-1,0", "[[0,-1,0],[-1,5,-1],[0,-1,0]]", "0 -1 0;-1 5 -1;0 -1 0"],
)
def test_inline_specs(library, spec):
    np.testing.assert_array_equal(library.resolve(spec).weights, EXPECTED["sharpen"])


def test_inline_fractions_and_single_row():
    np.testing.assert_allclose(parse_inline("1/4 1/2 1/4").weights, [[0.25, 0.5, 0.25]])
    np.testing.assert_allclose(parse_inline("[1, -1]").weights, [[1, -1]])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("1,2;3", "row 2 has 1 values but row 1 has 2"),
        ("1,x", "'x' is not a number"),
        ("1,nan", "not a finite number"),
        ("[[1,2]", "unbalanced brackets"),
    ],
)
def test_inline_errors(spec, message):
    with pytest.raises(KernelFileError, match=message):
        parse_inline(spec)


def write(tmp_path, text, name="k.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


GOOD = """\
version: 1
kernels:
  my-edge:
    description: mine
    divisor: 2
    matrix:
      - [1, 0, -1]
      - "2 0 -2"
      - [1, 0, -1]
"""


def test_user_file_loads_with_string_rows_and_divisor(tmp_path):
    (k,) = load_file(write(tmp_path, GOOD))
    np.testing.assert_array_equal(k.weights, np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]]) / 2)


@pytest.mark.parametrize(
    "body, message",
    [
        ("      - [1, 2]\n      - [3]\n", r"k.yaml:\d+: kernel 'bad': row 2 has 1 values but row 1 has 2"),
        ("      - [1, yes]\n", r"row 1, column 2: 'yes' is a boolean"),
        ("      - [1, 010]\n", r"row 1, column 2: '010' is ambiguous"),
        ("      - [1, 1:20]\n", r"'1:20' is a base-60 number"),
        ("      - [1, ~]\n", r"row 1, column 2: empty value"),
        ("      - [1, .nan]\n", r"not a finite number"),
        ("      - [1, .inf]\n", r"not a finite number"),
        ("      - [1, abc]\n", r"'abc' is not a number"),
        ("      - []\n", r"the kernel is empty"),
    ],
)
def test_matrix_errors_name_file_kernel_row_column(tmp_path, body, message):
    text = "kernels:\n  bad:\n    description: d\n    matrix:\n" + body
    with pytest.raises(KernelFileError, match=message):
        load_file(write(tmp_path, text))


def test_scientific_notation_is_a_number_not_a_string(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; kernelcli parses numbers itself.
    text = "kernels:\n  tiny:\n    description: d\n    matrix: [[1e-3, 2]]\n"
    (k,) = load_file(write(tmp_path, text))
    assert k.weights[0, 0] == pytest.approx(0.001)


@pytest.mark.parametrize(
    "text, message",
    [
        ("kernels:\n  a:\n    description: d\n    matrix: [[1]]\n  a:\n    description: e\n    matrix: [[2]]\n",
         r"k.yaml:5: duplicate key 'a' in 'kernels' \(first defined on line 2\)"),
        ("kernels:\n  a:\n    description: d\n    matrix: [[1]]\n    divisr: 2\n",
         r"k.yaml:5: kernel 'a': unknown key 'divisr'; did you mean 'divisor'\?"),
        ("kernels:\n  a:\n    description: d\n    matrix: [[1]]\n    divisor: 0\n", r"divisor must not be 0"),
        ("kernels:\n  a:\n    matrix: [[1]]\n", r"has no 'description'"),
        ("kernels:\n  a: &x\n    description: d\n    matrix: [[1]]\n  b: *x\n", r"anchors and aliases"),
        ("kernels:\n  a: !!python/object/apply:os.system ['true']\n", r"tag .* is not allowed"),
        ("kernels:\n  Bad_Name:\n    description: d\n    matrix: [[1]]\n", r"kernel name 'Bad_Name'"),
        ("kernels:\n  a:\n    description: d\n    matrix: [[1]]\n    map: wrap\n", r"map 'wrap' is not one of"),
        ("kernels: [1, 2]\n", r"'kernels' must be a mapping"),
        ("", r"the file is empty"),
        ("kernels:\n  a: [\n", r"k.yaml:\d+: invalid YAML"),
        ("a: 1\n---\nb: 2\n", r"invalid YAML"),
        ("kernels:\n  a:\n    description: d\n    matrix: " + "[" * 40 + "1" + "]" * 40 + "\n", r"nesting deeper"),
    ],
)
def test_file_errors(tmp_path, text, message):
    with pytest.raises(KernelFileError, match=message):
        load_file(write(tmp_path, text))


def test_size_cap(tmp_path):
    row = "[" + ", ".join(["1"] * 64) + "]"
    text = "kernels:\n  big:\n    description: d\n    matrix: [" + row + "]\n"
    with pytest.raises(KernelFileError, match="1x64; at most 63x63"):
        load_file(write(tmp_path, text))


def test_later_file_overrides_shipped_name_and_says_so(tmp_path):
    text = "kernels:\n  sharpen:\n    description: mine\n    matrix: [[2]]\n"
    lib = KernelLibrary.load([write(tmp_path, text)])
    k = lib.get("sharpen")
    assert k.weights.tolist() == [[2.0]]
    assert k.overrides and k.overrides.endswith("kernels.yaml")


def test_separable_factors_reconstruct(library):
    for k in (k for k in library if k.kind == "plain"):
        f = separable_factors(k.weights)
        if f is not None:
            np.testing.assert_allclose(np.outer(*f), k.weights, atol=1e-12)
    assert separable_factors(library.get("sobel-right").weights) is not None
    assert separable_factors(library.get("sharpen").weights) is None


def test_load_library_public_api(tmp_path):
    lib = kernelcli.load_library(write(tmp_path, GOOD))
    assert "my-edge" in lib and "sharpen" in lib


def test_max_kernel_option_raises_and_lowers_the_cap(tmp_path):
    from click.testing import CliRunner

    from kernelcli.cli import main

    big = ";".join([",".join(["1"] * 65)] * 65)
    refused = CliRunner().invoke(main, ["kernels", "show", big, "--json"])
    assert refused.exit_code == 2 and "65x65; at most 63x63 is allowed (--max-kernel raises it)" in refused.stderr
    ok = CliRunner().invoke(main, ["kernels", "show", big, "--json", "--max-kernel", "65"])
    assert ok.exit_code == 0, ok.stderr
    small = CliRunner().invoke(main, ["kernels", "show", "gaussian:2", "--max-kernel", "5"])
    assert small.exit_code == 2 and "over the limit of 5" in small.stderr


@pytest.mark.parametrize("argv", [["kernels", "show", "gaussian:1", "--max-kernel", "3"],  # refused: exit 2
                                  ["kernels", "show", "sharpen", "--max-kernel", "5"]])  # runs: exit 0
def test_max_kernel_of_one_cli_call_does_not_leak_into_later_library_calls(argv):
    from click.testing import CliRunner
    from scipy import ndimage

    from kernelcli.cli import main

    assert CliRunner().invoke(main, argv).exit_code in (0, 2)
    x = np.random.default_rng(3).random((20, 24))
    out = kernelcli.apply(x, "gaussian:1")  # 7x7, over the cap the CLI call was given
    g = np.exp(-(np.arange(-3, 4) ** 2) / 2.0)
    expected = ndimage.correlate(x, np.outer(g, g) / g.sum() ** 2, mode="nearest")
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert kernelcli.load_library().resolve(";".join(["1 1 1 1 1"] * 5)).shape == (5, 5)


def test_max_kernel_is_a_value_of_each_library(tmp_path):
    path = write(tmp_path, """\
        kernels:
          wide:
            description: five wide
            matrix: [[1, 1, 1, 1, 1]]
        """)
    with pytest.raises(KernelFileError, match="1x5; at most 4x4 is allowed"):
        load_file(path, max_kernel=4)
    small = KernelLibrary.load([], shipped=False, max_kernel=4)
    for spec, message in [("1 1 1 1 1", "1x5; at most 4x4"), ("gaussian:1", "size 7 is over the limit of 4"),
                          ("box:5", "from 1 to 4"), ("motion:5,0", "length 5 is over the limit of 4")]:
        with pytest.raises(KernelFileError, match=message):
            small.resolve(spec)
    assert small.resolve("box:4").shape == (4, 4)
    assert KernelLibrary.load([path], max_kernel=5).get("wide").shape == (1, 5)  # the next library: its own cap
    assert kernelcli.load_library(path, max_kernel=5).max_kernel == 5


def test_kernel_module_errors_name_no_command_line_flag():
    """Library errors describe the problem; only the CLI knows its flags (cli.message adds them)."""
    import ast
    import re

    for module in ("kernel", "library", "generate", "analysis"):
        path = Path(kernelcli.__file__).parent / "kernels" / f"{module}.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise):
                texts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                assert not [t for t in texts if re.search(r"--[a-z]", t)], f"{path.name}:{node.lineno}: {texts}"


@pytest.mark.parametrize("spec", [";".join(["1 1 1 1 1 1 1"] * 7), "gaussian:1", "box:7", "motion:7,0"])
def test_a_limit_error_names_the_setting_and_the_cli_names_the_flag(spec):
    from click.testing import CliRunner

    from kernelcli.cli import main, message

    with pytest.raises(KernelFileError) as caught:
        kernelcli.load_library(max_kernel=5).resolve(spec)
    assert caught.value.setting == "max_kernel" and "--" not in str(caught.value)
    assert message(caught.value) == f"{caught.value} (--max-kernel raises it)"
    result = CliRunner().invoke(main, ["kernels", "show", spec, "--max-kernel", "5"])
    assert result.exit_code == 2 and result.stderr == f"kernelcli: error: {message(caught.value)}\n"


def test_a_combined_kernel_keeps_the_setting_of_its_part(tmp_path):
    path = write(tmp_path, """\
        kernels:
          both:
            description: two big blurs
            combine: max
            of: [gaussian:1, box:7]
        """)
    with pytest.raises(KernelFileError, match="part 'gaussian:1'") as caught:
        KernelLibrary.load([path], shipped=False, max_kernel=5)
    assert caught.value.setting == "max_kernel"
    assert KernelLibrary.load([path], shipped=False).get("both").shape == (7, 7)


def test_saving_over_a_kernel_names_the_overwrite_setting(tmp_path):
    from kernelcli.cli import message
    from kernelcli.kernels.library import save_kernel

    path = tmp_path / "mine.yaml"
    save_kernel(path, "mine", [[1, 2, 1]], "first")
    with pytest.raises(KernelFileError, match="a kernel named 'mine' exists already$") as caught:
        save_kernel(path, "mine", [[1, 2, 1]], "second")
    assert caught.value.setting == "overwrite"
    assert message(caught.value).endswith("exists already; pass --overwrite to replace it")
    save_kernel(path, "mine", [[1, 2, 1]], "second", overwrite=True)
    assert load_file(path)[0].description == "second"
