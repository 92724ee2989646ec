"""pass@k (unbiased estimator) and mean@k: hand-computed values, and the sampled evaluation wired through
a fake engine and task."""

import math

import pytest

from isopo_bench import metric_names as M
from isopo_bench.evaluation import evaluate, pass_at_k, sampled_metrics
from isopo_bench.rollout.api import Rollout


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0),
    (5, 5, 3, 1.0),
    (5, 2, 1, 2 / 5),                      # pass@1 = c / n
    (5, 2, 2, 1 - (3 * 2) / (5 * 4)),      # 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    (4, 1, 2, 1 - 3 / 6),                  # 1 - C(3,2)/C(4,2) = 0.5
    (10, 3, 5, 1 - 21 / 252),              # 1 - C(7,5)/C(10,5) = 1 - 21/252
    (4, 2, 3, 1.0),                        # n - c = 2 < k: some correct sample is always drawn
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


@pytest.mark.parametrize("bad", [(3, 1, 4), (3, 4, 1), (3, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(bad):
    with pytest.raises(ValueError):
        pass_at_k(*bad)


def test_sampled_metrics_average_over_items():
    m = sampled_metrics([0, 2, 4], n=4, k=2)
    assert m[M.EVAL_MEAN_AT_K] == pytest.approx((0 + 0.5 + 1) / 3)
    assert m[M.EVAL_PASS_AT_K] == pytest.approx((0 + (1 - 1 / 6) + 1) / 3)


class Item:
    def __init__(self, answer):
        self.answer = answer


class FakeTask:
    def prompt(self, item):
        return f"q{item.answer}"

    def score(self, item, text):
        return float(text == item.answer)

    def score_details(self, item, text):
        return {}


class FakeTokenizer:
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text]}

    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(chr(i) for i in row) for row in ids]


class FakeEngine:
    """Greedy: always 'a'. Sampled (n=4): item 'a' gets a,a,b,b; item 'b' gets b,c,c,c."""

    def __init__(self):
        self.calls = []

    def generate(self, prompt_ids, sampling):
        self.calls.append(sampling)
        if sampling.greedy:
            rows = [[ord("a")] for _ in prompt_ids]
        else:
            table = {"a": "aabb", "b": "bccc"}
            rows = [[ord(ch)] for p in prompt_ids for ch in table[chr(p[-1])]]
        return Rollout(prompt_ids=[], completion_ids=rows, sampler_logps=[], finish_reasons=[])


def test_evaluate_reports_greedy_and_sampled_metrics():
    engine = FakeEngine()
    items = [Item("a"), Item("b")]
    result = evaluate(engine, FakeTask(), FakeTokenizer(), items, 8, 0, samples=4, pass_k=2, temperature=0.7, top_p=0.9, seed=5)
    assert result.metrics[M.EVAL_ACCURACY] == 0.5  # greedy 'a' is right for item a only
    assert result.metrics[M.EVAL_MEAN_AT_K] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert result.metrics[M.EVAL_PASS_AT_K] == pytest.approx(((1 - 1 / 6) + (1 - 3 / 6)) / 2)
    sampled = engine.calls[1]
    assert (sampled.n, sampled.temperature, sampled.top_p, sampled.seed) == (4, 0.7, 0.9, 5)


def test_evaluate_without_samples_is_greedy_only():
    engine = FakeEngine()
    result = evaluate(engine, FakeTask(), FakeTokenizer(), [Item("a")], 8, 0)
    assert len(engine.calls) == 1 and M.EVAL_PASS_AT_K not in result.metrics
