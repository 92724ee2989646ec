"""Number extraction and normalisation shared by the scorers.

Two extractions, as in verl's GSM8K reward (verl/utils/reward_score/gsm8k.py) that the ISOPO paper uses:
- strict: the number after the last "####" marker (the paper's reward);
- flexible: the last number anywhere in the text.

Numbers are compared as canonical strings ("1,234.50" -> "1234.5", "+7" -> "7", "-0" -> "0"), never
through eval, int() or float(): Python refuses int() on strings of more than 4300 digits and float()
rounds large integers. Every regex is a flat sequence of character classes (no nested quantifiers), so
matching is linear in the text length. Only ASCII digits count: `\\d` would also match other scripts'
digits, which the gold answers never contain. Extraction reads only the last MAX_CHARS characters, which
bounds its cost on runaway completions while keeping the final answer (verl keeps only the last 300).
"""

from __future__ import annotations

import re

# A digit run with optional thousands separators and decimals. The comma form needs groups of exactly
# three digits, so "1,2,3" reads as three numbers (the last is 3) and "1,234" as one.
_NUMBER = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?"
# A sign counts only when it does not follow a digit: in "57-7" the answer is 7, not -7.
_SIGNED = rf"(?:(?<![0-9])[-+\u2212])?{_NUMBER}"
_FLEX_RE = re.compile(rf"{_SIGNED}")
# Up to 8 spaces or tabs and an optional "$" between the marker and the number.
_STRICT_RE = re.compile(rf"####[ \t]{{0,8}}\$?[ \t]{{0,8}}({_SIGNED})")
MAX_CHARS = 20_000
_FULL_RE = re.compile(rf"[ \t]{{0,8}}([-+\u2212]?)[ \t]{{0,8}}\$?[ \t]{{0,8}}({_NUMBER})[ \t]{{0,8}}")


def canonical_number(number: str) -> str:
    """Canonical form of a matched number: no commas, no "+", no leading/trailing zeros, no "-0"."""
    sign = "-" if number[:1] in ("-", "\u2212") else ""
    digits = number.lstrip("+-\u2212").replace(",", "")
    whole, _, frac = digits.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    body = f"{whole}.{frac}" if frac else whole
    return body if body == "0" else sign + body


def normalize_number(text: str) -> str | None:
    """Canonical form of a whole string holding one number ("$1,234.00 " -> "1234"), else None."""
    if len(text) > MAX_CHARS:
        return None
    match = _FULL_RE.fullmatch(text.strip())
    if match is None:
        return None
    return canonical_number(match.group(1) + match.group(2))


def extract_strict(text: str) -> str | None:
    """Canonical number after the last "####" marker, or None when there is none."""
    last = None
    for last in _STRICT_RE.finditer(text[-MAX_CHARS:]):
        pass
    return None if last is None else canonical_number(last.group(1))


def extract_flexible(text: str) -> str | None:
    """Canonical form of the last number in the text, or None when there is none."""
    last = None
    for last in _FLEX_RE.finditer(text[-MAX_CHARS:]):
        pass
    return None if last is None else canonical_number(last.group(0))


def numbers_equal(predicted: str | None, gold: str) -> float:
    """1.0 when the extracted answer equals the gold answer after normalisation, else 0.0."""
    if predicted is None:
        return 0.0
    gold_canonical = normalize_number(gold)
    return float(gold_canonical is not None and predicted == gold_canonical)


def score_strict(completion: str, gold: str) -> float:
    return numbers_equal(extract_strict(completion), gold)


def score_flexible(completion: str, gold: str) -> float:
    return numbers_equal(extract_flexible(completion), gold)
