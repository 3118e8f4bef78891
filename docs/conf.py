"""Sphinx configuration for pyro_lvmle.

Intersphinx to Pyro and torch works offline: the inventories are written at build time from
the installed packages (every public class and function of the modules Pyro's and torch's
documentation pages cover), so the build needs no network and always matches the installed
versions.
"""

import importlib
import inspect
import json
import pathlib
import re
import textwrap
import zlib

import pyro
import torch

import pyro_lvmle

project = "pyro_lvmle"
author = "pyro_lvmle developers"
copyright = "2026, pyro_lvmle developers"
release = pyro_lvmle.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"  # the :param: entries carry the types
html_theme = "alabaster"
html_static_path = []
exclude_patterns = ["_build"]

_INVENTORIES = pathlib.Path(__file__).parent / "_build" / "_inventories"

# Pyro's documentation pages, by the modules each documents.
_PYRO_PAGES = {
    "inference_algos.html": [
        "pyro.infer.svi", "pyro.infer.elbo", "pyro.infer.trace_elbo", "pyro.infer.traceenum_elbo",
        "pyro.infer.tracegraph_elbo", "pyro.infer.renyi_elbo", "pyro.infer.rws",
        "pyro.infer.importance", "pyro.infer.predictive", "pyro.infer.enum",
    ],
    "infer.autoguide.html": ["pyro.infer.autoguide.guides"],
    "mcmc.html": ["pyro.infer.mcmc.api", "pyro.infer.mcmc.hmc", "pyro.infer.mcmc.nuts",
                  "pyro.infer.mcmc.mcmc_kernel"],
    "primitives.html": ["pyro.primitives", "pyro.poutine.plate_messenger"],
    "poutine.html": ["pyro.poutine.handlers", "pyro.poutine.trace_struct"],
    "parameters.html": ["pyro.params.param_store"],
    "nn.html": ["pyro.nn.module"],
    "optimization.html": ["pyro.optim.optim", "pyro.optim.pytorch_optimizers"],
    "distributions.html": ["pyro.distributions.torch", "pyro.distributions.improper_uniform",
                           "pyro.distributions.torch_distribution"],
}
# Public aliases Pyro users write, e.g. pyro.infer.Trace_ELBO for pyro.infer.trace_elbo.Trace_ELBO.
_PYRO_ALIASES = ["pyro", "pyro.infer", "pyro.infer.autoguide", "pyro.infer.mcmc", "pyro.poutine",
                 "pyro.distributions", "pyro.optim", "pyro.nn"]

_TORCH = [
    ("torch.Tensor", "py:class", "tensors.html#torch.Tensor"),
    ("torch.dtype", "py:class", "tensor_attributes.html#torch.dtype"),
    ("torch.device", "py:class", "tensor_attributes.html#torch.device"),
    ("torch.Size", "py:class", "size.html#torch.Size"),
    ("torch.Generator", "py:class", "generated/torch.Generator.html#torch.Generator"),
    ("torch.nn.Module", "py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
    ("torch.optim.LBFGS", "py:class", "generated/torch.optim.LBFGS.html#torch.optim.LBFGS"),
    ("torch.distributions.distribution.Distribution", "py:class",
     "distributions.html#torch.distributions.distribution.Distribution"),
    ("torch.distributions.constraints.Constraint", "py:class",
     "distributions.html#torch.distributions.constraints.Constraint"),
]


def _objects(module_name):
    """(qualified name, role) of the public classes and functions a module defines."""
    module = importlib.import_module(module_name)
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isclass(obj):
            yield f"{module_name}.{name}", "py:class", obj
        elif inspect.isfunction(obj):
            yield f"{module_name}.{name}", "py:function", obj


def _pyro_entries():
    entries, uri_of = [], {}
    for page, modules in _PYRO_PAGES.items():
        for module_name in modules:
            for qualname, role, obj in _objects(module_name):
                uri = f"{page}#{qualname}"
                entries.append((qualname, role, uri))
                uri_of[id(obj)] = (role, uri)
    for alias in _PYRO_ALIASES:
        module = importlib.import_module(alias)
        for name, obj in vars(module).items():
            if not name.startswith("_") and id(obj) in uri_of:
                role, uri = uri_of[id(obj)]
                entries.append((f"{alias}.{name}", role, uri))
    return entries


def _write_inventory(path, project_name, project_version, entries):
    """Write a Sphinx objects.inv (format version 2)."""
    header = (f"# Sphinx inventory version 2\n# Project: {project_name}\n"
              f"# Version: {project_version}\n"
              "# The remainder of this file is compressed using zlib.\n")
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(set(entries)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + zlib.compress(body.encode()))
    return str(path)


intersphinx_mapping = {
    "pyro": (f"https://docs.pyro.ai/en/{pyro.__version__}/", _write_inventory(
        _INVENTORIES / "pyro.inv", "Pyro", pyro.__version__, _pyro_entries())),
    "torch": ("https://pytorch.org/docs/stable/", _write_inventory(
        _INVENTORIES / "torch.inv", "PyTorch", torch.__version__.split("+")[0], _TORCH)),
}


# The tutorial notebooks (docs/tutorials/*.ipynb, executed by tests/test_notebooks.py) are
# rendered as pages written here from their cells: markdown cells (headings, paragraphs,
# inline code) as reST, code cells as code blocks. No pandoc or Jupyter needed.
_TUTORIALS = pathlib.Path(__file__).parent / "tutorials"
_UNDERLINES = {1: "=", 2: "-", 3: "~"}


def _markdown_to_rst(text):
    lines = []
    for line in text.splitlines():
        heading = re.match(r"^(#{1,3}) (.*)$", line)
        if heading:
            title = heading.group(2).strip()
            lines += [title, _UNDERLINES[len(heading.group(1))] * len(title)]
            continue
        lines.append(re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", line))
    return "\n".join(lines)


def _notebook_page(path):
    cells = json.loads(path.read_text())["cells"]
    parts = []
    for index, cell in enumerate(cells):
        source = "".join(cell["source"]).rstrip()
        if cell["cell_type"] == "markdown":
            parts.append(_markdown_to_rst(source))
            if index == 0:
                parts.append(f"(Download :download:`the notebook <{path.name}>`; the test "
                             "suite runs it top to bottom.)")
        elif cell["cell_type"] == "code":
            parts.append(".. code-block:: python\n\n" + textwrap.indent(source, "    "))
    return ".. generated from the notebook by docs/conf.py; do not edit\n\n" + \
        "\n\n".join(parts) + "\n"


for _notebook in sorted(_TUTORIALS.glob("*.ipynb")):
    _page = _TUTORIALS / f"{_notebook.stem}.rst"
    _text = _notebook_page(_notebook)
    if not _page.exists() or _page.read_text() != _text:  # no rebuild when unchanged
        _page.write_text(_text)
