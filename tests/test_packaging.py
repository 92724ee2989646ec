"""Packaging: every package is in pyproject.toml's list (an editable checkout hides a missing one), the
library does not pin torch to one release, and the wheel installed for real (not editable) into a fresh
virtualenv trains, runs a suite, validates a control run and serves the dashboard (scripts/wheel_check.sh)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed():
    tool = pyproject()["tool"]["setuptools"]
    listed, mapped = set(tool["packages"]), tool["package-dir"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "isopo_bench").rglob("__init__.py")}
    for package, folder in mapped.items():
        found |= {package + "".join(f".{part}" for part in p.parent.relative_to(ROOT / folder).parts)
                  for p in (ROOT / folder).rglob("__init__.py") if "node_modules" not in p.parts}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_torch_is_a_range_and_setup_pins_the_cpu_build():
    torch_req = [d for d in pyproject()["project"]["dependencies"] if d.startswith("torch")]
    assert torch_req == ["torch>=2.6"]  # a user's own CUDA build of any later release satisfies it
    assert "pip install -q torch==2.13.0" in (ROOT / "scripts/setup.sh").read_text()


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "scripts/wheel_check.sh"), str(tmp_path)], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "installed package:" in out.stdout and str(ROOT) not in out.stdout.split("installed package:")[1].split()[0]
    assert "FINISHED" in out.stdout and "dashboard served on 127.0.0.1" in out.stdout


def test_package_data_ships_every_file_of_a_shipped_warm_start(tmp_path):
    """pyproject's package-data globs (relative to the package folder, as setuptools reads them) match every
    file `isopo-bench warmstart --export` writes, and the folder's README; a real wheel holding them is
    checked by scripts/wheel_check.sh."""
    patterns = pyproject()["tool"]["setuptools"]["package-data"]["isopo_bench"]
    package = tmp_path / "isopo_bench"
    shipped = package / "warm_starts" / "0123456789ab"
    shipped.mkdir(parents=True)
    names = ["MANIFEST.sha256", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
             "tokenizer.json", "tokenizer_config.json", "warmstart.json"]
    for name in names:
        (shipped / name).write_text("x")
    (package / "warm_starts" / "README.md").write_text("x")
    matched = {p.relative_to(package).as_posix() for pattern in patterns for p in package.glob(pattern)}
    assert matched == {f"warm_starts/0123456789ab/{n}" for n in names} | {"warm_starts/README.md"}
    assert (ROOT / "isopo_bench" / "warm_starts" / "README.md").is_file()
