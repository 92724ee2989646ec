"""Per-item greedy evaluation results as two MLflow tags, so the leaderboard can resample evaluation items.

`eval_items_correct` (metric_names.TAG_ITEMS_CORRECT) holds item i's greedy correctness (1 when its
reward >= 0.5, as the sampled evaluation counts it) at position i of the evaluation order, for the
latest evaluation of the run. While that fits MLflow's tag limit it is a string of `0`/`1` characters
("0110..."), else hex-packed bits: "hex:<n>:<digits>", four items per hex digit, the first item in the
most significant bit, the last digit padded with zeros.

`eval_items_digest` (TAG_ITEMS_DIGEST) is a short hash of the evaluated items (question and gold answer,
in order): two runs are compared item by item only when their digests agree.

Pure Python (hashlib, json), so the trainer writes and the leaderboard reads without importing each other.
"""

from __future__ import annotations

import hashlib
import json

from isopo_bench import metric_names as M

TAG_VALUE_LIMIT = 5000
"""Characters of an MLflow tag value in the SQL stores' older schemas (3.x allow 8000; the smaller
limit keeps the tag writable on every store)."""
HEX_PREFIX = "hex:"
_MAX_HEADER = len(HEX_PREFIX) + len("99999:")
MAX_ITEMS = (TAG_VALUE_LIMIT - _MAX_HEADER) * 4
"""Items whose correctness fits one tag value: 4 items per hex digit after the longest header."""
DIGEST_CHARS = 16


def encode_correct(correct: list[int]) -> str:
    """0/1 per item -> the tag value (plain 0/1 string, or hex-packed beyond TAG_VALUE_LIMIT items)."""
    if any(c not in (0, 1) for c in correct):
        raise ValueError("per-item correctness must be 0 or 1 for every item")
    if len(correct) > MAX_ITEMS:
        raise ValueError(f"{len(correct)} evaluation items do not fit one MLflow tag (at most {MAX_ITEMS}). "
                         "Fix: lower task.eval_items")
    bits = "".join(str(c) for c in correct)
    if len(bits) <= TAG_VALUE_LIMIT:
        return bits
    padded = bits + "0" * (-len(bits) % 4)
    digits = "".join(f"{int(padded[i:i + 4], 2):x}" for i in range(0, len(padded), 4))
    return f"{HEX_PREFIX}{len(bits)}:{digits}"


def decode_correct(value: str) -> list[int]:
    """The tag value -> 0/1 per item (the inverse of encode_correct); an empty value -> no items."""
    if value.startswith(HEX_PREFIX):
        count, _, digits = value[len(HEX_PREFIX):].partition(":")
        if set(digits) - set("0123456789abcdef"):
            raise ValueError(f"malformed hex-packed item record {value[:40]!r}: non-hex digits")
        bits = "".join(f"{int(d, 16):04b}" for d in digits)
        if not count.isdigit() or not int(count) <= len(bits) < int(count) + 4:
            raise ValueError(f"malformed hex-packed item record: {count!r} items in {len(digits)} hex digits")
        bits = bits[:int(count)]
    else:
        bits = value
    if set(bits) - {"0", "1"}:
        raise ValueError(f"malformed item record {value[:40]!r}: expected 0/1 characters or {HEX_PREFIX}<n>:<hex>")
    return [int(b) for b in bits]


def items_digest(items) -> str:
    """A short sha256 of the items' (question, answer) pairs in evaluation order."""
    payload = json.dumps([[item.question, item.answer] for item in items], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:DIGEST_CHARS]


def item_tags(correct: list[int], items, step: int) -> dict[str, str]:
    """The tags recording one evaluation; written at every evaluation, so a run keeps its latest."""
    return {M.TAG_ITEMS_CORRECT: encode_correct(correct), M.TAG_ITEMS_DIGEST: items_digest(items),
            M.TAG_ITEMS_STEP: str(step)}
