"""The import rule: layers point one way, and third-party imports stay in their one home.

Every import of a module of ``party/`` is resolved to the module it names, whatever its form
(``import party.x``, ``from party import x``, ``from .. import x``, ``from ..x import y``), and
every module must have a place in ``LAYERS``: a module the test cannot place fails it, so a new
module is placed on purpose, never skipped. The first tests prove the checker itself catches
what it is there to catch.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PARTY = Path(__file__).resolve().parent.parent / "party"

# Lower number = lower layer. A module may import its own layer's foundations or lower layers.
LAYERS = {
    "errors": 0, "timestamps": 0, "channel": 0, "storable": 0, "schedule": 0,
    "model": 1, "handler": 1,
    "stores": 2, "registry": 2,
    "queue": 3, "admission": 3, "views": 3, "metrics": 3,
    "runner": 4,
    "pool": 5,
    # local (party.open) is a way into the queue beside the server and the scheduler: it reads the
    # settings as they do, and as their peer it may not import either (no tornado, no validation
    # of the server's own: the rules it shares with POST /tasks live in queue and admission).
    "server": 6, "scheduler": 6, "local": 6,
    "cli": 7, "__main__": 7, "up": 7, "check": 7,
}  # fmt: skip
SERVICES = 6
ENTRY_POINTS = 7
# Checked by their own rules below: config and log (standard library, for entry points only), the
# client (standard library, nothing of Party), the handler folder and the public API.
FREE = {"config", "log", "client", "tasks", "__init__"}

HOMES = {
    "tornado": ("server/", "cli.py"),
    # The Mongo store's modules: stores/mongo.py and its stores/mongo_*.py helpers.
    "pymongo": ("stores/mongo",),
    "bson": ("stores/mongo", "model.py", "stores/sqlite.py"),
    "multiprocessing": ("pool/",),
    "prometheus_client": ("metrics.py",),
    "cronsim": ("schedule.py",),
    "signal": ("server/listen.py", "scheduler/main.py", "cli.py", "up.py", "pool/"),
}


def modules():
    for path in sorted(PARTY.rglob("*.py")):
        rel = path.relative_to(PARTY).as_posix()
        yield rel, ast.parse(path.read_text(), str(path))


def top(rel):
    return rel.split("/")[0].removesuffix(".py")


def _is_module(dotted):
    """True when ``party.a.b`` names a module or package of the source tree."""
    path = PARTY.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imported(tree, rel):
    """The absolute name of every module a module imports, relative forms resolved."""
    package = ["party", *rel.removesuffix(".py").split("/")[:-1]]
    if rel.endswith("__init__.py"):
        package = ["party", *rel.split("/")[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            yield module
            # `from party import queue` and `from .. import queue` import the module queue.
            for alias in node.names:
                if _is_module(f"{module}.{alias.name}"):
                    yield f"{module}.{alias.name}"


def violations(rel, tree):
    """What breaks the import rule in module ``rel`` (a path under party/)."""
    wrong = []
    mine = top(rel)
    if mine in FREE or rel.startswith("tasks/"):
        return wrong
    if mine not in LAYERS:
        return [f"{rel} has no place in LAYERS: add it to its layer"]
    if LAYERS[mine] == ENTRY_POINTS:
        return wrong  # may import anything
    for name in imported(tree, rel):
        if name is None or not name.startswith("party.") or name == "party":
            continue
        theirs = name.split(".")[1]
        if theirs in ("config", "log"):
            if LAYERS[mine] < SERVICES:
                wrong.append(f"{rel} imports {name} (config/log are for entry points)")
            continue
        if theirs == "client":
            wrong.append(f"{rel} imports {name} (the client is for applications)")
            continue
        if theirs == "tasks" or theirs == "__init__":
            continue
        if theirs not in LAYERS:
            wrong.append(f"{rel} imports {name}, which has no place in LAYERS")
            continue
        if LAYERS[theirs] > LAYERS[mine] or (
            LAYERS[theirs] == LAYERS[mine] == SERVICES and theirs != mine  # never each other
        ):
            wrong.append(f"{rel} imports {name}")
    # Stores know nothing of handlers or of the queue.
    if rel.startswith("stores/"):
        for name in imported(tree, rel):
            if name and name.split(".")[:2] in (
                ["party", "handler"], ["party", "registry"], ["party", "queue"],
            ):  # fmt: skip
                wrong.append(f"{rel} imports {name}")
    return wrong


def test_the_checker_catches_an_upward_import_in_every_form():
    for source in (
        "from .. import queue",
        "from ..queue import TaskQueue",
        "from party import queue",
        "from party.queue import TaskQueue",
        "import party.queue",
        "from ..pool import WorkerPool",
    ):
        assert violations("stores/sqlite.py", ast.parse(source)), source
    assert violations("server/app.py", ast.parse("from ..scheduler import loop"))
    assert violations("pool/worker.py", ast.parse("from ..server import app"))
    assert violations("newthing.py", ast.parse("import os")) == [
        "newthing.py has no place in LAYERS: add it to its layer"
    ]
    assert violations("stores/sqlite.py", ast.parse("from .. import errors, timestamps")) == []


def test_party_imports_point_down_the_layers():
    wrong = [v for rel, tree in modules() for v in violations(rel, tree)]
    assert wrong == []


def test_third_party_and_os_level_imports_stay_in_their_home():
    wrong = []
    for rel, tree in modules():
        for name in imported(tree, rel):
            root = (name or "").split(".")[0]
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


@pytest.mark.processes
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


@pytest.mark.processes
def test_scheduler_and_public_api_start_without_the_date_parser_or_hashes():
    # dateutil.parser costs about 15 ms of a start and hashlib 4 ms; only string timestamps and
    # recurring tasks need them. (The store's wake-up channel still hashes, so hashlib loads there.)
    assert loaded_after("party.scheduler.main, party.stores.sqlite", ("dateutil",)) == "[]"
    assert loaded_after("party", ("dateutil", "hashlib")) == "[]"


def test_public_api_is_pinned():
    import party

    assert sorted(party.__all__) == [
        "TaskBase", "TaskException", "__version__", "on_worker_start", "on_worker_stop", "open",
        "system_now",
    ]  # fmt: skip


@pytest.mark.processes
def test_importing_party_loads_no_store_nor_server_nor_date_parser():
    # party.open imports the store it opens; handler modules and applications that only import
    # party pay for none of it.
    heavy = ("tornado", "pymongo", "dateutil", "party.stores.sqlite", "party.stores.mongo",
             "party.local", "party.queue", "sqlite3")  # fmt: skip
    assert loaded_after("party", heavy) == "[]"


@pytest.mark.processes
def test_open_loads_the_sqlite_store_but_neither_tornado_nor_pymongo_nor_the_date_parser():
    code = (
        "import sys, tempfile, party; "
        "q = party.open('sqlite:///' + tempfile.mkdtemp() + '/p.db'); q.add('SampleTask'); "
        "q.close(); "
        "print(sorted(m for m in ('tornado', 'pymongo', 'dateutil', 'party.server', "
        "'party.scheduler', 'party.stores.sqlite') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PARTY.parent, capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    assert out.stdout.strip() == "['party.stores.sqlite']"


def test_a_test_not_marked_processes_cannot_start_one():
    # tests/conftest.py keeps make test-fast (-m "not processes") free of processes.
    with pytest.raises(AssertionError, match="mark it @pytest.mark.processes"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(AssertionError, match="mark it @pytest.mark.processes"):
        pid = os.fork()  # without the guard: a real child, which leaves at once
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
