"""Package-wide contracts: public names documented in the house style, layering, data."""

import ast
import importlib
import inspect
import pathlib

import pytest

import pyro_lvmle as lv

PACKAGE = pathlib.Path(lv.__file__).parent

# DESIGN.md's layers, bottom up; a module may import only from its own layer or below.
# ``_checks`` (the shared input checks) sits below them all.
LAYERS = ["_checks", "models", "traces", "objectives", "samplers", "gradients", "em",
          "evidence", "top"]


def _public_objects():
    modules = [lv, lv.models]
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        modules.append(importlib.import_module(name))
    for module in modules:
        assert hasattr(module, "__all__"), f"{module.__name__} has no __all__"
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj


@pytest.mark.parametrize("qualname,obj", list(_public_objects()), ids=lambda x: str(x)[:60])
def test_public_names_are_documented(qualname, obj):
    doc = inspect.getdoc(obj)
    assert doc and doc.splitlines()[0].strip(), f"{qualname} has no summary line"
    if inspect.isclass(obj) and issubclass(obj, lv.models.ReferenceModel):
        for part in (".. math::", "References:", ":param", "Example::"):
            assert part in doc, f"{qualname}'s docstring lacks {part!r}"
        for method in ("log_marginal", "simulate", "model"):
            assert inspect.getdoc(getattr(obj, method)), f"{qualname}.{method} is undocumented"
    elif inspect.isfunction(obj):
        params = [p for p in inspect.signature(obj).parameters if p not in ("self",)]
        if params:
            assert ":param" in doc, f"{qualname} documents none of its parameters"


def _layer(parts):
    """The layer of a module given its path below pyro_lvmle, e.g. ('models', 'ppca')."""
    return parts[0] if parts and parts[0] in LAYERS else "top"


def _imported_modules(path):
    """Modules below pyro_lvmle that ``path`` imports, as tuples of names."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    package = rel[:-1]  # the package a relative import starts from (also for __init__.py)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)]
            yield (*base, *(node.module.split(".") if node.module else ()))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro_lvmle."):
            yield tuple(node.module.split(".")[1:])


def test_lower_layers_never_import_higher_ones():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        own = LAYERS.index(_layer(rel[:-1] if len(rel) > 1 else ()))
        for target in _imported_modules(path):
            assert LAYERS.index(_layer(target)) <= own, f"{path} imports the higher {target}"


def test_theophylline_csv_ships_inside_the_package():
    assert (PACKAGE / "models" / "data" / "Theoph.csv").is_file()
    assert (PACKAGE / "models" / "data" / "Theoph.SOURCE.md").is_file()


def test_version_is_set():
    assert lv.__version__ and lv.__version__ != "0+unknown"
