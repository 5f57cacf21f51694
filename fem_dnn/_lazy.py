"""Package namespaces whose names load on first use (PEP 562).

A subpackage re-exports its modules' public names without importing them: reading a
light module of it (the scheme or loss registry, which the config and the CLI read)
does not import DOLFINx or PETSc through the package's ``__init__``.
"""

import importlib

__all__ = ["exports"]


def exports(package: str, where: dict[str, str]):
    """``(__getattr__, __dir__, __all__)`` for ``package`` from ``{name: module}``.

    A name must not be that of a module of the package: once the module is imported, the
    package's attribute of that name is the module, and ``__getattr__`` is not asked."""
    clash = sorted(set(where) & set(where.values()))
    if clash:
        raise ImportError(f"{package} exports {clash}, which are also its modules' names")

    def __getattr__(name):
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    names = sorted(where)

    def __dir__():
        return names

    return __getattr__, __dir__, names
