"""The shape of the house: small modules, one backend seam, no import
circle. Read from the source, not run."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_lk"
MAX_LINES = 450
SEAM = "keras_lk.core.backend"
# TensorFlow only where TensorBoard is written.
WRITERS = {"keras_lk.monitoring.summary", "keras_lk.study.sweep",
           "keras_lk.study.structured"}
# The Torch-Pruning peer runs in PyTorch, whatever Keras's backend.
PEER = "keras_lk.study.torch_peer"
# Asks whether TensorFlow is installed, not which backend runs.
INSTALL_CHECK = "keras_lk.core.install"
BACKEND_PACKAGES = ("tensorflow", "jax", "torch")


def modules():
    """`{dotted name: parsed module}` of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = (path, ast.parse(path.read_text()))
    return found


def imported(name, tree, known):
    """The keras_lk modules `tree` imports (a package's `from X import m`
    counts as importing X.m where that is a module of `known`)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    # Importing a module runs its packages' __init__ first (the root's,
    # the public facade that imports everything, aside).
    for module in list(found):
        parts = module.split(".")
        found.update(".".join(parts[:i]) for i in range(2, len(parts)))
    return {m for m in found if m.startswith("keras_lk.") and m != name
            and not name.startswith(m + ".")}


def test_no_module_is_over_450_lines():
    long = {name: len(path.read_text().splitlines())
            for name, (path, _) in modules().items()
            if len(path.read_text().splitlines()) > MAX_LINES}
    assert not long, long


def test_the_imports_form_no_circle():
    known = modules()
    graph = {name: imported(name, tree, known)
             for name, (_, tree) in known.items()}
    done, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError(" -> ".join(path[path.index(node):] + [node]))
        if node in done or node not in graph:
            return
        path.append(node)
        for child in sorted(graph[node]):
            visit(child)
        path.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_only_the_seam_asks_which_backend_runs():
    offenders = []
    for name, (path, tree) in modules().items():
        if name in (SEAM, INSTALL_CHECK, PEER):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "backend" and (
                    isinstance(node.value, ast.Attribute)
                    and node.value.attr == "backend"):
                offenders.append(f"{path.name}:{node.lineno} keras.backend.backend")
            if isinstance(node, ast.Constant) and node.value in (
                    "tensorflow", "jax", "torch"):
                offenders.append(f"{path.name}:{node.lineno} {node.value!r}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = ([a.name for a in node.names]
                         if isinstance(node, ast.Import) else [node.module])
                for module in names:
                    top = (module or "").split(".")[0]
                    if top in BACKEND_PACKAGES and not (
                            top == "tensorflow" and name in WRITERS):
                        offenders.append(f"{path.name}:{node.lineno} import "
                                         f"{module}")
    assert not offenders, offenders


def test_the_checks_see_a_circle_and_a_branch(tmp_path, monkeypatch):
    # The checks above would pass on a tree they cannot read: they must
    # find a planted circle and a planted branch.
    package = tmp_path / "keras_lk"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from keras_lk import b\n")
    (package / "b.py").write_text(
        "import keras\nfrom keras_lk import a\n"
        "ON_TF = keras.backend.backend() == 'tensorflow'\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    for check in (test_the_imports_form_no_circle,
                  test_only_the_seam_asks_which_backend_runs):
        try:
            check()
        except AssertionError as error:
            assert "b" in str(error)
        else:
            raise AssertionError(f"{check.__name__} found nothing")


# The rooms, bottom first: each imports only rooms below it (the root
# facade and the command's entry point aside).
ROOMS = ["core", "penalties", "structure", "attach", "export", "monitoring",
         "sparsity", "study"]


def room_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (
        len(parts) == 2 and parts[1] in ROOMS) else None


def test_dependencies_point_down():
    known = modules()
    upward = []
    for name, (_, tree) in known.items():
        here = room_of(name)
        if here is None:
            continue
        for module in imported(name, tree, known):
            there = room_of(module)
            if there is not None and there != here and (
                    ROOMS.index(there) > ROOMS.index(here)):
                upward.append(f"{name} -> {module}")
    assert not upward, upward


def test_the_optimizer_imports_neither_sparsity_nor_structure():
    known = modules()
    name = "keras_lk.penalties.optimizer"
    found = imported(name, known[name][1], known)
    assert found, "the check read no import"
    assert not [m for m in found if m.startswith(
        ("keras_lk.sparsity", "keras_lk.structure"))], found


# The module-level registries (empty containers filled at run time) and
# the one stack-frame walk, each in one module that says why it exists.
REGISTRIES = {
    ("keras_lk.core.backend", "_CURRENT"),
    ("keras_lk.core.handled", "HANDLED"),
    ("keras_lk.monitoring.recording", "_RECORDINGS"),
    ("keras_lk.penalties.optimizer", "_state_builders"),
    ("keras_lk.sparsity.target", "_warned_flops"),
    ("keras_lk.structure.describe", "_BY_CLASS"),
    ("keras_lk.structure.describe", "BY_NAME"),
}
FRAME_WALK = "keras_lk.core.handled"


def _empty_container(node):
    return (isinstance(node, (ast.Dict, ast.List, ast.Set))
            and not getattr(node, "keys", getattr(node, "elts", None))) or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in ("dict", "list", "set") and not node.args) or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id == "_Handled")


def test_registries_and_the_frame_walk_are_the_known_ones():
    found, walks = set(), set()
    for name, (_, tree) in modules().items():
        bodies = [tree.body] + [n.body for n in tree.body
                                if isinstance(n, ast.ClassDef)]
        for body in bodies:
            for node in body:
                if isinstance(node, ast.Assign) and _empty_container(
                        node.value):
                    found.update((name, t.id) for t in node.targets
                                 if isinstance(t, ast.Name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in (
                    "currentframe", "_getframe"):
                walks.add(name)
    assert found == REGISTRIES
    assert walks == {FRAME_WALK}
    for name, _ in REGISTRIES | {(FRAME_WALK, None)}:
        assert "exists" in (modules()[name][0].read_text()), name
