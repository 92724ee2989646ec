"""Per-item evaluation records (isopo_bench.item_record): hand-written encodings, the tag limit, the
item digest, and the config check that keeps task.eval_items inside the limit."""

from __future__ import annotations

import pytest

from isopo_bench import item_record as R
from isopo_bench.config import replace
from isopo_bench.errors import ConfigError
from isopo_bench.presets import run_preset
from isopo_bench.task_api import TaskItem


def test_short_records_are_plain_bit_strings():
    assert R.encode_correct([0, 1, 1, 0]) == "0110"
    assert R.decode_correct("0110") == [0, 1, 1, 0]
    assert R.decode_correct("") == [] and R.encode_correct([]) == ""
    assert len(R.encode_correct([1] * R.TAG_VALUE_LIMIT)) == R.TAG_VALUE_LIMIT  # the longest plain record


def test_long_records_are_hex_packed_by_hand():
    # 5001 items: 1011, then zeros, the last item correct -> digit 1 = b, 1249 zero digits, last digit 1000 = 8
    correct = [1, 0, 1, 1] + [0] * 4996 + [1]
    encoded = R.encode_correct(correct)
    assert encoded == "hex:5001:b" + "0" * 1249 + "8"
    assert R.decode_correct(encoded) == correct


def test_the_largest_record_fits_the_tag_limit():
    correct = [1, 0, 0] * (R.MAX_ITEMS // 3) + [1] * (R.MAX_ITEMS % 3)
    encoded = R.encode_correct(correct)
    assert len(correct) == R.MAX_ITEMS and len(encoded) <= R.TAG_VALUE_LIMIT
    assert R.decode_correct(encoded) == correct
    with pytest.raises(ValueError, match="lower task.eval_items"):
        R.encode_correct([0] * (R.MAX_ITEMS + 1))


@pytest.mark.parametrize("value", ["01x1", "hex:9:ff", "hex:8:fg", "hex::"])
def test_malformed_records_are_errors(value):
    with pytest.raises(ValueError, match="malformed"):
        R.decode_correct(value)


def test_only_0_and_1_are_recorded():
    with pytest.raises(ValueError, match="0 or 1"):
        R.encode_correct([0, 2])


def test_digest_follows_the_items_and_their_order():
    a, b = TaskItem("1+1", "2"), TaskItem("2+2", "4")
    digest = R.items_digest([a, b])
    assert len(digest) == R.DIGEST_CHARS and int(digest, 16) >= 0
    assert R.items_digest([TaskItem("1+1", "2"), TaskItem("2+2", "4")]) == digest
    assert R.items_digest([b, a]) != digest
    assert R.items_digest([a, TaskItem("2+2", "5")]) != digest


def test_item_tags_name_the_step():
    tags = R.item_tags([1, 0], [TaskItem("q", "a"), TaskItem("r", "b")], step=7)
    assert tags == {"eval_items_correct": "10", "eval_items_digest": R.items_digest([TaskItem("q", "a"), TaskItem("r", "b")]),
                    "eval_items_step": "7"}


def test_too_many_eval_items_is_a_config_error():
    cfg = replace(run_preset("tiny-smoke"), **{"task.eval_items": R.MAX_ITEMS + 1})
    with pytest.raises(ConfigError, match="task.eval_items") as info:
        cfg.validate()
    assert str(R.MAX_ITEMS) in str(info.value)
