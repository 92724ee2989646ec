"""The plug-in registry: duplicates, unknown names, lazy "module:attr" entries and entry-point plug-ins."""

import sys

import pytest

from isopo_bench.algorithm_api import Algorithm
from isopo_bench.errors import UnknownNameError
from isopo_bench.plugins import ALGORITHMS
from isopo_bench.registry import Registry

THIRD_PARTY_SOURCE = '''
from isopo_bench.algorithm_api import Algorithm


class ThirdPartyAlgo(Algorithm):
    needs_old_logp = True
    marker = 42
'''


@pytest.fixture
def forget_modules():
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


def test_builtin_algorithms_are_registered():
    assert {"reinforce", "grpo", "cispo", "gspo"} <= set(ALGORITHMS.names())
    assert ALGORITHMS.get("grpo").needs_old_logp is True
    assert ALGORITHMS.get("cispo").needs_old_logp is True
    assert ALGORITHMS.get("gspo").needs_old_logp is True


def test_duplicate_name_raises_and_same_object_is_idempotent():
    reg: Registry = Registry("widget")

    def first():
        return 1

    def second():
        return 2

    reg.register("a")(first)
    reg.register("a")(first)  # re-importing a module registers the same object again
    with pytest.raises(ValueError, match="`a` is already registered"):
        reg.register("a")(second)
    with pytest.raises(ValueError, match="already registered"):
        reg.register_lazy("a", "os.path:join")
    assert reg.get("a")() == 1


def test_unknown_name_lists_near_misses_and_known_names():
    reg: Registry = Registry("algorithm")
    for name in ("grpo", "gspo", "cispo", "reinforce"):
        reg.register(name)(name)
    with pytest.raises(UnknownNameError) as err:
        reg.get("gpro")
    message = str(err.value)
    assert "unknown algorithm `gpro`" in message
    near_misses = message.split("Did you mean ")[1].split("?")[0].split(", ")
    assert set(near_misses) == {"grpo", "gspo"}
    assert message.endswith("Known algorithms: cispo, grpo, gspo, reinforce")
    with pytest.raises(KeyError) as err:
        reg.get("zzzzzz")
    assert "Did you mean" not in str(err.value)
    assert "cispo, grpo, gspo, reinforce" in str(err.value)


def test_lazy_entry_is_imported_on_first_get(tmp_path, monkeypatch, forget_modules):
    module = "isopo_lazy_probe_mod"
    forget_modules.append(module)
    (tmp_path / f"{module}.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("engine")
    reg.register_lazy("probe", f"{module}:VALUE")
    assert reg.names() == ["probe"]
    assert module not in sys.modules
    assert reg.get("probe") == 7
    assert module in sys.modules
    assert reg.get("probe") == 7


def write_plugin_distribution(root, module: str, group: str, entry_name: str) -> None:
    """A minimal installed distribution: a .dist-info folder on sys.path plus its module."""
    dist_info = root / "isopo_thirdparty_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: isopo-thirdparty-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{group}]\n{entry_name} = {module}:ThirdPartyAlgo\n")
    (root / f"{module}.py").write_text(THIRD_PARTY_SOURCE)


def test_entry_point_plugin_from_outside_the_package(tmp_path, monkeypatch, forget_modules):
    module = "isopo_thirdparty_algo_mod"
    forget_modules.append(module)
    write_plugin_distribution(tmp_path, module, "isopo_bench.algorithms", "third_party")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("algorithm", "isopo_bench.algorithms")
    assert "third_party" in reg.names()
    assert module not in sys.modules  # entry points load lazily, like "module:attr" entries
    cls = reg.get("third_party")
    assert issubclass(cls, Algorithm)
    assert cls.marker == 42
    assert cls.needs_old_logp is True


def test_entry_point_of_another_group_is_not_picked_up(tmp_path, monkeypatch, forget_modules):
    module = "isopo_thirdparty_task_mod"
    forget_modules.append(module)
    write_plugin_distribution(tmp_path, module, "isopo_bench.tasks", "third_party")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("algorithm", "isopo_bench.algorithms")
    assert "third_party" not in reg.names()
    with pytest.raises(UnknownNameError, match="unknown algorithm `third_party`"):
        reg.get("third_party")
