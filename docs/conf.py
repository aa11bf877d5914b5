"""Sphinx configuration: the API reference from the docstrings (autodoc + napoleon, Google style
with ``Arguments:``), and the tutorials from their committed outputs (myst-nb, never executed).

Build with ``make docs`` (``sphinx-build -W --keep-going``): any warning fails the build.
"""

import importlib
import pkgutil
import re
import shutil
import sys
from pathlib import Path

from docutils.statemachine import StringList
from sphinx.ext.autosummary import Autosummary
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"  # written by this file on every build; gitignored
sys.path[:0] = [str(ROOT), str(ROOT / ".ci")]  # this checkout's package, and the import check

import check_imports  # noqa: E402

import pyro_unlearn  # noqa: E402

logger = logging.getLogger(__name__)

project = "pyro_unlearn"
author = "the pyro_unlearn authors"
copyright = "the pyro_unlearn authors"
release = version = pyro_unlearn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"pyro_unlearn {release}"

# autodoc: what each automodule's :members: shows, as zuko and Pyro publish theirs
autodoc_default_options = {"show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"  # short signatures; the types go to the argument lists
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autosummary_generate = False

# napoleon: Google style; ``Arguments:``, ``Returns:``, ``References:`` and ``Example:`` are
# sections it knows
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# myst-nb: the tutorials as committed, outputs included; nothing runs at build time
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3


def _copy_tutorials() -> None:
    """Sphinx reads only what is below docs/: the notebooks and the files they link to."""
    target = GENERATED / "tutorials"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(
        ROOT / "tutorials", target, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.py")
    )


def _draw_imports() -> None:
    """The picture of the package's imports, and its text form, from the sources."""
    graph = check_imports.import_graph(ROOT)
    check_imports.draw(graph, GENERATED / "imports.png")
    (GENERATED / "imports.txt").write_text(check_imports.text_picture(graph) + "\n")


GENERATED.mkdir(exist_ok=True)
_copy_tutorials()
_draw_imports()


# ---- which public names the API pages document --------------------------------------------------

_DIRECTIVE = re.compile(r"^\.\. (automodule|package-api):: *(\S+)\n((?: +:[^\n]*\n)*)", re.M)


def _is_module(obj) -> bool:
    return isinstance(obj, type(sys))


def _members(module) -> list[str]:
    """What ``automodule:: module`` with ``:members:`` shows: ``__all__``, or else the public
    names the module (or, for a package, one of its modules) defines."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and f"{getattr(obj, '__module__', None)}.".startswith(f"{module.__name__}.")
    ]


def _defined_in(package: str, name: str) -> str:
    """The submodule of ``package`` that defines its public ``name``: a class's or function's
    ``__module__``; for a constant, the submodule that assigns it under a ``#:`` comment."""
    obj = getattr(importlib.import_module(package), name)
    module = getattr(obj, "__module__", None)
    if callable(obj) and module and module.startswith(package + "."):
        return module
    holders = [
        m
        for m in sorted(sys.modules)
        if m.startswith(package + ".") and vars(sys.modules[m]).get(name) is obj
    ]
    for holder in holders:
        if ("", name) in ModuleAnalyzer.for_module(holder).find_attr_docs():
            return holder
    return holders[0] if holders else package


def _package_sections(package: str) -> dict[str, list[str]]:
    """``{submodule: the package's public names it defines}``, in the order of the package's
    ``__all__``: what ``.. package-api::`` documents."""
    sections: dict[str, list[str]] = {}
    for name in _members(importlib.import_module(package)):
        if not _is_module(getattr(importlib.import_module(package), name)):
            sections.setdefault(_defined_in(package, name), []).append(name)
    return sections


def _pages() -> list[tuple[str, list[str]]]:
    """``(module, names)`` for every module the API pages document members of, in page order."""
    found = []
    for page in sorted((DOCS / "api").glob("*.rst")):
        for directive, module, options in _DIRECTIVE.findall(page.read_text()):
            if directive == "package-api":
                found += list(_package_sections(module).items())
            elif ":members:" in options:
                found.append((module, _members(importlib.import_module(module))))
    return found


def _where_documented() -> dict[int, str]:
    """``{id(object): the full name its page documents it under}``."""
    where = {}
    for module, names in _pages():
        for name in names:
            obj = getattr(importlib.import_module(module), name, None)
            if obj is not None and not _is_module(obj):
                where.setdefault(id(obj), f"{module}.{name}")
    return where


def _public_faces() -> list[str]:
    """The modules whose ``__all__`` is public API: the package, the modules it exports, each of
    its subpackages (a subpackage's other modules are its internals), the modules on a page."""
    names = ["pyro_unlearn"]
    names += [
        m.__name__ for m in map(vars(pyro_unlearn).get, pyro_unlearn.__all__) if _is_module(m)
    ]
    for info in pkgutil.walk_packages(pyro_unlearn.__path__, "pyro_unlearn."):
        parts = info.name.split(".")
        if info.ispkg and "experiments" not in parts and not any(p[0] == "_" for p in parts):
            names.append(info.name)
    for page in sorted((DOCS / "api").glob("*.rst")):
        names += [m for d, m, opts in _DIRECTIVE.findall(page.read_text()) if ":members:" in opts]
    return list(dict.fromkeys(names))


class PackageAPI(SphinxDirective):
    """``.. package-api:: pyro_unlearn.infer`` — a subpackage's docstring, then its public names
    (its ``__all__``), one section per public submodule that defines them, by ``automodule``
    (names defined in the package itself or in a private submodule stay under the package): the
    page follows the subpackage as its modules are split or merged, and a constant is documented
    by its ``#:`` comment where it is assigned. The directive's content may list submodules
    (short names) to put first, in that order. A plain module works too: one section."""

    required_arguments = 1
    has_content = True

    def run(self):
        package = self.arguments[0]
        sections = _package_sections(package)
        own = [  # defined in the package itself or in a private module of it
            name
            for module in list(sections)
            if module == package or "._" in module.removeprefix(package)
            for name in sections.pop(module)
        ]
        first = [f"{package}.{line.strip()}" for line in self.content if line.strip()]
        order = [m for m in first if m in sections] + [m for m in sections if m not in first]
        text = [f".. automodule:: {package}"]
        text += [f"   :members: {', '.join(own)}", ""] if own else [""]
        for module in order:
            title = f"``{module.removeprefix(package + '.')}``"
            text += [title, "-" * len(title), "", f".. automodule:: {module}"]
            text += [f"   :members: {', '.join(sections[module])}", ""]
        return self.parse_text_to_nodes("\n".join(text), allow_section_headings=True)


def _resolve(full_name: str):
    """The object a documented full name stands for (``None`` if it cannot be imported)."""
    parts = full_name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part, None)
        return obj
    return None


def _check_coverage(app, env) -> None:
    """Warn about every public name (in the ``__all__`` of a public face) that no page documents
    (a constant is documented by a ``#:`` comment above it), and about an ``__all__`` that names
    what its module lacks."""
    kinds = {"class", "exception", "function", "decorator", "data", "type"}
    objects = env.get_domain("py").objects
    documented = {id(_resolve(name)) for name, entry in objects.items() if entry.objtype in kinds}
    for name in _public_faces():
        module = importlib.import_module(name)
        if getattr(module, "__file__", None) is None:
            logger.warning(f"{name} is a namespace package: it lacks an __init__.py")
        elif not hasattr(module, "__all__") and _members(module):
            logger.warning(f"{name} has no __all__: its public face is undeclared")
        for member in getattr(module, "__all__", []):
            obj = getattr(module, member, None)
            if obj is None:
                logger.warning(f"{name}.__all__ names {member}, which {name} lacks")
            elif not _is_module(obj) and id(obj) not in documented:
                logger.warning(f"{name}.{member} is public but documented on no page of docs/api/")


_STARRED = re.compile(r"^(\s+)(\*{1,2}\w+(?:, *\*{0,2}\w+)*)(\s*(?:\(.*?\))?:)")


def _escape_starred_arguments(app, what, name, obj, options, lines) -> None:
    """``*args, **kwargs: ...`` in an ``Arguments:`` list: napoleon escapes the stars of a lone
    ``*args`` or ``**kwargs`` only, so a combined entry is escaped before it reads the docstring."""
    for i, line in enumerate(lines):
        match = _STARRED.match(line)
        if match:
            indent, names, colon = match.groups()
            lines[i] = indent + names.replace("*", "\\*") + colon + line[match.end() :]


class PublicAPI(Autosummary):
    """``.. public-api::`` — a table of ``pyro_unlearn.__all__``, each name linked to the page
    that documents it, with its one-line summary."""

    def run(self):
        where = _where_documented()
        rows = []
        for name in pyro_unlearn.__all__:
            obj = getattr(pyro_unlearn, name)
            if _is_module(obj):
                rows.append(obj.__name__)
            else:
                rows.append(where.get(id(obj), f"pyro_unlearn.{name}"))
        self.content = StringList(["~" + row for row in rows])
        return super().run()


def setup(app):
    app.add_directive("public-api", PublicAPI)
    app.add_directive("package-api", PackageAPI)
    app.connect("env-check-consistency", _check_coverage)
    app.connect("autodoc-process-docstring", _escape_starred_arguments, priority=400)
    return {"parallel_read_safe": True}
