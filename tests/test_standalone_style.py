"""standalone.style: fx's generated code made to read like ruff-formatted code."""

import pytest

from lwdna_plugin.standalone.style import keyword_spacing, pylist, tidy, wrap


def test_tidy_splits_statements_and_writes_del_and_F():
    fx_code = (
        "def forward(self, x):\n"
        "    relu = torch.nn.functional.relu(x, inplace = False);  x = None\n"
        "    gelu = torch._C._nn.gelu(relu);  relu = None\n"
        "    getitem = gelu[(slice(None, 28, None), 0)];  gelu = None\n"
        "    return getitem\n"
    )
    assert tidy(fx_code) == (
        "def forward(self, x):\n"
        "    relu = F.relu(x, inplace=False)\n"
        "    del x\n"
        "    gelu = F.gelu(relu)\n"
        "    del relu\n"
        "    getitem = gelu[:28, 0]\n"
        "    del gelu\n"
        "    return getitem\n"
    )


def test_tidy_writes_slices_and_ellipsis_and_keeps_private_calls():
    assert tidy("y = x[(slice(None, None, None), Ellipsis, None)]\n") == "y = x[:, ..., None]\n"
    assert tidy("y = x[(slice(1, None, 2), -1)]\n") == "y = x[1::2, -1]\n"
    assert tidy("y = torch._C._nn.not_in_F(x)\n") == "y = torch._C._nn.not_in_F(x)\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("y = f(x, dim = 1)", "y = f(x, dim=1)"),
        ("y = f(x, s = 'a = b')", "y = f(x, s='a = b')"),
        ("y = x", "y = x"),  # an assignment, not a keyword argument
        ("y = f(a == b)", "y = f(a == b)"),
    ],
)
def test_keyword_spacing(line, expected):
    assert keyword_spacing(line) == expected


def test_wrap_leaves_short_lines_and_splits_long_calls():
    assert wrap("    y = f(x)") == "    y = f(x)"
    long_call = "    y = function(" + ", ".join(f"argument_{i}" for i in range(12)) + ")"
    wrapped = wrap(long_call, width=80)
    assert wrapped.splitlines()[0] == "    y = function("
    assert wrapped.splitlines()[-1] == "    )"
    assert all(len(line) <= 80 for line in wrapped.splitlines())
    assert "".join(wrapped.split()).replace(",)", ")") == "".join(long_call.split())


def test_wrap_del_and_imports_and_subscripts():
    names = [f"name_{i}" for i in range(20)]
    assert (
        wrap("    del " + ", ".join(names), width=60)
        == "    del (\n" + "".join(f"        {n},\n" for n in names) + "    )"
    )
    assert wrap("from a import " + ", ".join(names), width=60).startswith("from a import (\n    name_0,\n")
    subscript = "    y = x[" + "0, " * 30 + "0]"
    assert wrap(subscript, width=40) == subscript


def test_pylist_is_a_double_quoted_literal():
    assert pylist(["a.b", "c"]) == '["a.b", "c"]'
    assert pylist([]) == "[]"


def test_tidy_writes_slices_whose_bounds_are_names():
    src = "y = x[(slice(None, None, None), slice(None, getitem_2, None), slice(n, -1, None), Ellipsis)]\n"
    assert tidy(src) == "y = x[:, :getitem_2, n:-1, ...]\n"
    assert tidy("y = x[(slice(None, size, 2),)]\n") == "y = x[:size:2,]\n"


def test_tidy_writes_strings_in_double_quotes():
    assert tidy("y = F.pad(x, (0, 1), mode='constant')\n") == 'y = F.pad(x, (0, 1), mode="constant")\n'
    assert tidy('y = f(x, "it\'s")\n') == 'y = f(x, "it\'s")\n'
