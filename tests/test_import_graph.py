"""The package's floor plan: each layer imports only the layers below it (and itself), and no
module imports itself back through others. Lazy imports inside functions count too."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "alignmix_jax"
# Lower number, lower layer. models and data are side by side: neither imports the other.
LAYERS = {"core": 0, "models": 1, "data": 1, "trainer": 2, "analysis": 3}
COMMANDS = 4  # the modules at the package's top: main, sweep, evaluate, visualize, cli, ...


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    if module == "alignmix_jax":  # the package itself re-exports the op
        return LAYERS["core"]
    return LAYERS.get(parts[1], COMMANDS)


def imports(path: pathlib.Path) -> set[str]:
    """The alignmix_jax modules `path` imports, anywhere in it (`from pkg import mod` resolved to
    `pkg.mod` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("alignmix_jax")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alignmix_jax"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                where = PACKAGE.parent / candidate.replace(".", "/")
                is_module = where.with_suffix(".py").exists() or (where / "__init__.py").exists()
                found.add(candidate if is_module else node.module)
    return found


GRAPH = {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_reaches_a_higher_layer(module):
    upward = sorted(target for target in GRAPH[module] if layer(target) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def test_no_import_circles():
    """Depth-first search for a cycle among the modules (package __init__s included)."""
    state: dict[str, str] = {}

    def visit(module, trail):
        state[module] = "open"
        for target in GRAPH.get(module, ()):
            if target == module or target not in GRAPH:
                continue
            if state.get(target) == "open":
                raise AssertionError(f"import circle: {' -> '.join([*trail, module, target])}")
            if target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_the_layers_are_read_from_the_tree():
    """The check sees every package and a real import edge (it cannot pass on an empty graph)."""
    assert {name.split(".")[1] for name in GRAPH if name.count(".") >= 1} >= set(LAYERS)
    assert "alignmix_jax.core.ot" in GRAPH["alignmix_jax.core.method"]
    assert layer("alignmix_jax.trainer.train") == 2 and layer("alignmix_jax.main") == COMMANDS
