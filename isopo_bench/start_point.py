"""What a run starts from, in its MLflow record: the `start_hash`, `model` and `model_display` tags.

- start_hash (TAG_START_HASH): `content:<sha256 prefix>` of the folder the policy loads (init_from, the tiny
  model's folder, a local name_or_path; isopo_bench.model_identity.start_identity), so the same starting
  bits read the same on every machine and different bits never share a hash; `hub:<id>` for a hub id.
- model (TAG_MODEL, the leaderboard's comparison group): where the folder lies is no part of it. A warm
  start is `warmstart/<key>` whether it was trained into this machine's cache or shipped with the package,
  so runs from one warm-start config on two machines land in one group, where the leaderboard compares
  their start hashes (isopo_bench.start_check). A hub id, `tiny` or another local folder: as given.
- model_display (TAG_MODEL_DISPLAY), for people: `tiny-qwen3 0.605M + warm start arithmetic(max_operand=9)
  [1a2b3c4d]` (task settings that differ from the task's defaults; the first 8 hex digits of start_hash);
  a hub id alone.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from isopo_bench import metric_names as M
from isopo_bench.config import ModelConfig
from isopo_bench.model_identity import is_local_folder, start_identity

WARM_START_REPORT = "warmstart.json"


def start_tags(model: ModelConfig, source: str) -> dict[str, str]:
    """The three tags of a run whose policy loads from `source` (models.model_source of `model`)."""
    start_hash = start_identity(source)
    return {M.TAG_START_HASH: start_hash, M.TAG_MODEL: model_label(model, source),
            M.TAG_MODEL_DISPLAY: model_display(model, source, start_hash)}


def model_label(model: ModelConfig, source: str) -> str:
    report = _warm_start_report(source)
    if report is not None:
        return f"warmstart/{report.get('key') or Path(source).name}"  # reports before `key` was kept: the cache name
    return model.init_from or model.name_or_path


def model_display(model: ModelConfig, source: str, start_hash: str) -> str:
    if start_hash.startswith("hub:"):
        return start_hash[len("hub:"):]
    report = _warm_start_report(source)
    base = report["config"]["model"]["name_or_path"] if report else (model.name_or_path if not model.init_from else "")
    name = _base_name(base, source)
    count = parameter_count(Path(source))
    text = f"{name} {format_count(count)}" if count else name
    if report:
        text += f" + warm start {task_description(report['config']['task'])}"
    return f"{text} [{start_hash.split(':', 1)[-1][:8]}]"


def _base_name(base: str, source: str) -> str:
    if base == "tiny":
        return "tiny-" + _model_type(Path(source))
    if base and not is_local_folder(base):
        return base  # a hub id the warm start (or run) fine-tunes
    return Path(source).name


def _model_type(folder: Path) -> str:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type", "model")
    except (OSError, ValueError):
        return "model"


def task_description(task: dict) -> str:
    """`name(setting=value, ...)`: the settings that differ from the task's defaults."""
    from isopo_bench.plugins import TASKS

    name, settings = task.get("name", "?"), task.get("settings") or {}
    try:
        defaults = vars(TASKS.get(name).Settings())
    except Exception:  # noqa: BLE001 - a task no longer registered: show every setting
        defaults = {}
    changed = [f"{k}={v}" for k, v in settings.items() if k not in defaults or defaults[k] != v]
    return f"{name}({', '.join(changed)})" if changed else name


def parameter_count(folder: Path) -> int:
    """Parameters stored in a folder's safetensors files, read from their headers (tied weights are stored
    once, so they count once); 0 when there are none."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))  # safetensors: u64 little-endian header size, JSON header
            header = json.loads(fh.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                total += math.prod(entry["shape"])
    return total


def format_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.3g}B"
    if n >= 1e5:  # 0.605M rather than 605K: model sizes are read in millions
        return f"{n / 1e6:.3g}M"
    if n >= 1e3:
        return f"{n / 1e3:.3g}K"
    return str(n)


def _warm_start_report(source: str) -> dict | None:
    path = Path(source).expanduser() / WARM_START_REPORT
    if not (is_local_folder(source) and path.is_file()):
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
