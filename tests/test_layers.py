"""The import rule: layers point one way, and third-party imports stay in their one home."""

import ast
import subprocess
import sys
from pathlib import Path

PARTY = Path(__file__).resolve().parent.parent / "party"

# Lower number = lower layer. A module may import its own layer's foundations or lower layers.
LAYERS = {
    "errors": 0, "timestamps": 0,
    "model": 1, "handler": 1,
    "stores": 2, "registry": 2,
    "queue": 3,
    "runner": 4, "worker": 4, "pool": 4,
    "server": 5, "scheduler": 5,
    "cli": 6, "__main__": 6,
}  # fmt: skip
FREE = {"config", "log", "client", "tasks", "__init__"}  # checked by their own rules below

HOMES = {
    "tornado": ("server", "cli"),
    "pymongo": ("stores/mongo.py",),
    "bson": ("stores/mongo.py", "model.py", "stores/sqlite.py"),
    "multiprocessing": ("pool.py", "worker.py"),
    "signal": ("server/listen.py", "scheduler/main.py", "cli.py", "pool.py", "worker.py"),
}


def modules():
    for path in sorted(PARTY.rglob("*.py")):
        rel = path.relative_to(PARTY).as_posix()
        yield rel, ast.parse(path.read_text(), str(path))


def top(rel):
    return rel.split("/")[0].removesuffix(".py")


def imported(tree, rel):
    """(absolute module, is_party) for every import of a module."""
    package = ["party", *rel.removesuffix(".py").split("/")[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module


def test_party_imports_point_down_the_layers():
    wrong = []
    for rel, tree in modules():
        mine = top(rel)
        if mine in FREE or rel.startswith("tasks/"):
            continue
        for name in imported(tree, rel):
            if not name.startswith("party.") or name == "party":
                continue
            theirs = name.split(".")[1]
            if theirs in ("config", "log"):
                if LAYERS[mine] < 5:
                    wrong.append(f"{rel} imports {name} (config/log are for entry points)")
                continue
            if theirs == "client" or theirs not in LAYERS:
                continue
            if LAYERS[theirs] > LAYERS[mine] or (
                LAYERS[theirs] == LAYERS[mine] == 5 and theirs != mine
            ):
                wrong.append(f"{rel} imports {name}")
    # Stores know nothing of handlers or of the queue.
    for rel, tree in modules():
        if rel.startswith("stores/"):
            for name in imported(tree, rel):
                if name.split(".")[:2] in (
                    ["party", "handler"],
                    ["party", "registry"],
                    ["party", "queue"],
                ):
                    wrong.append(f"{rel} imports {name}")
    assert wrong == []


def test_third_party_and_os_level_imports_stay_in_their_home():
    wrong = []
    for rel, tree in modules():
        for name in imported(tree, rel):
            root = name.split(".")[0]
            if root in HOMES and not rel.startswith(HOMES[root]):
                wrong.append(f"{rel} imports {name}")
    assert wrong == []


def test_client_config_and_log_use_the_standard_library_only():
    for rel, tree in modules():
        if rel in ("client.py", "config.py", "log.py"):
            for name in imported(tree, rel):
                assert name.split(".")[0] not in ("tornado", "pymongo", "bson", "dateutil"), rel
                if rel == "client.py":
                    assert not name.startswith("party"), rel


def test_importing_party_loads_neither_tornado_nor_pymongo():
    code = (
        "import sys, party, party.client, party.queue, party.stores.sqlite, party.registry; "
        "print(sorted(m for m in ('tornado', 'pymongo') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PARTY.parent, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def loaded_after(imports, modules):
    code = f"import sys, {imports}; print(sorted(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PARTY.parent, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_scheduler_and_public_api_start_without_the_date_parser_or_hashes():
    # dateutil.parser costs about 15 ms of a start and hashlib 4 ms; only string timestamps and
    # recurring tasks need them. (The store's wake-up channel still hashes, so hashlib loads there.)
    assert loaded_after("party.scheduler.main, party.stores.sqlite", ("dateutil",)) == "[]"
    assert loaded_after("party", ("dateutil", "hashlib")) == "[]"


def test_public_api_is_pinned():
    import party

    assert sorted(party.__all__) == ["TaskBase", "TaskException", "__version__", "system_now"]
