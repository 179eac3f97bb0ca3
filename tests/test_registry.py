import sys
import textwrap

import pytest

from party.errors import RegistryError
from party.registry import discover


def write(path, body):
    path.write_text(textwrap.dedent(body))
    return path


def test_builtin_tasks_are_always_loaded_with_the_seeds_examples():
    registry = discover()
    assert {"SampleTask", "RecurringTask", "RecurringTask2"} <= set(registry.names)
    assert registry.get("RecurringTask").is_recurring


def test_directory_and_file_sources_are_loaded(tmp_path):
    d = tmp_path / "more"
    d.mkdir()
    write(d / "a.py", "from party import TaskBase\nclass Alpha(TaskBase):\n    pass\n")
    single = write(
        tmp_path / "b.py", "from party import TaskBase\nclass Beta(TaskBase):\n    pass\n"
    )
    registry = discover([str(d), str(single)])
    assert "Alpha" in registry and "Beta" in registry


def test_module_name_sources_are_imported(tmp_path, monkeypatch):
    write(
        tmp_path / "my_handlers.py",
        "from party import TaskBase\nclass Gamma(TaskBase):\n    pass\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "Gamma" in discover(["my_handlers"])
    finally:
        sys.modules.pop("my_handlers", None)


def test_imported_handler_is_not_found_twice(tmp_path):
    write(
        tmp_path / "base_mod.py", "from party import TaskBase\nclass Delta(TaskBase):\n    pass\n"
    )
    write(
        tmp_path / "user_mod.py",
        """
        import importlib.util, pathlib
        spec = importlib.util.spec_from_file_location(
            "base_mod_alias", pathlib.Path(__file__).with_name("base_mod.py"))
        from party.tasks.sample import SampleTask  # imported, not defined here
        """,
    )
    registry = discover([str(tmp_path)])
    assert "Delta" in registry and "SampleTask" in registry


def test_two_handlers_with_one_name_name_both_places(tmp_path):
    write(tmp_path / "one.py", "from party import TaskBase\nclass Twin(TaskBase):\n    pass\n")
    write(tmp_path / "two.py", "from party import TaskBase\nclass Twin(TaskBase):\n    pass\n")
    with pytest.raises(RegistryError, match=r"two handlers are named 'Twin'.*one\.py.*two\.py"):
        discover([str(tmp_path)])


def test_unimportable_source_is_a_clear_error(tmp_path):
    write(tmp_path / "broken.py", "raise ImportError('nope')\n")
    with pytest.raises(RegistryError, match="cannot load handlers from .*broken.py"):
        discover([str(tmp_path / "broken.py")])
    with pytest.raises(RegistryError, match="cannot import handler module 'no_such_mod'"):
        discover(["no_such_mod"])
    with pytest.raises(RegistryError, match="not a file"):
        discover([str(tmp_path / "missing.py")])


def test_unknown_names_are_never_imported():
    registry = discover()
    assert registry.get("os.system") is None and "os.system" not in registry
    assert registry.get("party.tasks.sample.SampleTask") is None
