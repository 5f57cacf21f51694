"""The layers of fem_dnn only point down (docs/api/README.md: the data flows one way).

Every module of the package is parsed with ``ast`` (no import): every import statement,
at module level, inside functions and classes, under ``if TYPE_CHECKING`` alike, ``import
x`` and ``from x import y`` and relative imports, must name a module of its own layer or
of a layer below. The top-level modules (``fem_dnn.errors``, ``fem_dnn._mpi``, ...) are the
layer below ``core``; ``fem_dnn.__main__`` (the ``python -m fem_dnn`` entry point) is
above ``app``. No module imports a private name (``_x``) of a module of another package
(the modules of one package, such as ``fem_dnn.core.kernel``, may share helpers).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fem_dnn"

#: The layers, lowest first; a module may import its own layer and the ones before it.
LAYERS = ("", "core", "network", "learning", "optimize", "hjb", "app", "__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    me = module_name(path)
    return me if path.name == "__init__.py" else me.rpartition(".")[0]


def layer(module: str) -> int:
    """The layer of a module of fem_dnn (its first component below the package)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else 0


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel.with_suffix(".py")).is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def imports(path: Path, name: str | None = None):
    """``(line, imported module, name or None)`` of every import of fem_dnn in a file (of
    the module ``name``, default: the package's module at ``path``); ``from fem_dnn.x
    import y`` names ``fem_dnn.x.y`` when that is a module."""
    package = package_of(path) if name is None else name.rpartition(".")[0]
    nodes = sorted((n for n in ast.walk(ast.parse(path.read_text(), str(path)))
                    if isinstance(n, (ast.Import, ast.ImportFrom))), key=lambda n: (n.lineno, n.col_offset))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fem_dnn":
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, level - 1 packages up
                up = package.split(".")
                up = up[: len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "fem_dnn":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (node.lineno, full, None) if is_module(full) else (node.lineno, base, alias.name)


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def upward_imports(paths, name: str | None = None) -> list[str]:
    found = []
    for path in paths:
        me = module_name(path) if name is None else name
        for line, target, _ in imports(path, name):
            if layer(target) > layer(me):
                where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE) else path.name
                found.append(f"{where}:{line}: {me} ({LAYERS[layer(me)] or 'top level'}) "
                             f"imports {target} ({LAYERS[layer(target)]})")
    return found


def test_the_package_is_parsed():
    """Every subpackage is found, and the parser sees imports inside functions."""
    names = {module_name(p) for p in modules()}
    assert {f"fem_dnn.{sub}" for sub in LAYERS[1:-1]} <= names
    inner = [t for line, t, _ in imports(PACKAGE / "app" / "train.py") if t == "fem_dnn.app.checkpoint"]
    assert inner  # train() imports the checkpoint module inside the function


def test_no_module_imports_a_layer_above_its_own():
    found = upward_imports(modules())
    assert not found, "imports against the data flow:\n" + "\n".join(found)


def test_an_upward_import_is_found(tmp_path):
    """The check reports an import inside a function, a relative one and a
    ``from fem_dnn import app``, each in a module of a lower layer."""
    fake = tmp_path / "probe.py"  # read as the module fem_dnn.optimize.probe
    fake.write_text("def f():\n    from fem_dnn.app.checkpoint import save_checkpoint\n"
                    "from ..hjb import solver\nfrom fem_dnn import app\nfrom fem_dnn import errors\n"
                    "from . import tao\nimport fem_dnn.learning.functional\n")
    found = upward_imports([fake], "fem_dnn.optimize.probe")
    assert [f.split(" imports ")[1] for f in found] == ["fem_dnn.app.checkpoint (app)", "fem_dnn.hjb.solver (hjb)",
                                                         "fem_dnn.app (app)"], found


def test_no_module_imports_a_private_name_of_another_package():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {target}.{name}"
             for path in modules() for line, target, name in imports(path)
             if name is not None and name.startswith("_") and not name.startswith("__")
             and target.rpartition(".")[0] != package_of(path)]
    assert not found, "private names imported from other modules:\n" + "\n".join(found)


def test_scripts_import_what_the_package_has():
    """Every ``from fem_dnn... import name`` of the bench, demo and test scripts names a
    module of the package and a name it defines, exports or holds as a submodule (a
    restructured package leaves no script behind: bench/slabs_vs_pytorch.py once
    imported the removed ``fem_dnn.core.domain``)."""
    import importlib

    root = PACKAGE.parent
    stale = []
    for path in sorted([*root.glob("bench/*.py"), *root.glob("demos/*.py"), *root.glob("tests/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                    and node.module.split(".")[0] == "fem_dnn"):
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            if not is_module(node.module):
                stale.append(f"{where}: no module {node.module}")
                continue
            mod = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name != "*" and not (hasattr(mod, alias.name) or is_module(f"{node.module}.{alias.name}")):
                    stale.append(f"{where}: {node.module} has no {alias.name}")
    assert not stale, "\n".join(stale)
