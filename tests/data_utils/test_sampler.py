from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from data_utils.dataset import padding_fraction
from data_utils.errors import UserError
from data_utils.sampler import (
    EvalBatchSampler,
    MixOptStrategy,
    MultiTaskBatchSampler,
    ProportionalStrategy,
    SamplingStrategy,
    SamplingStrategyName,
    TemperatureStrategy,
    make_strategy,
)

SIZES = {"mnli": 37, "rte": 16, "sts": 9}


def sampler(sizes=SIZES, batch_size=4, strategy=None, *, seed=7, epoch=0, **kwargs) -> MultiTaskBatchSampler:
    s = MultiTaskBatchSampler(sizes, batch_size, strategy or ProportionalStrategy(), seed=seed, **kwargs)
    s.set_epoch(epoch)
    return s


def task_of(batch: list[tuple[str, int]]) -> str:
    tasks = {task for task, _ in batch}
    assert len(tasks) == 1, f"batch mixes tasks {tasks}"
    return tasks.pop()


def test_proportional_covers_every_row_once_with_per_task_batch_counts() -> None:
    s = sampler()
    batches = list(s)
    assert len(batches) == len(s) == 10 + 4 + 3
    counts = Counter(task_of(batch) for batch in batches)
    assert counts == {"mnli": 10, "rte": 4, "sts": 3}
    seen = Counter(pair for batch in batches for pair in batch)
    assert set(seen.values()) == {1}
    assert set(seen) == {(task, row) for task, size in SIZES.items() for row in range(size)}
    assert sorted(len(b) for b in batches if task_of(b) == "mnli") == [1] + [4] * 9  # partial batch kept


def test_drop_last_drops_partial_batches() -> None:
    batches = list(sampler(drop_last=True))
    assert Counter(task_of(b) for b in batches) == {"mnli": 9, "rte": 4, "sts": 2}
    assert all(len(b) == 4 for b in batches)


def test_reshuffles_per_epoch_and_is_reproducible() -> None:
    epoch0, epoch1 = list(sampler(epoch=0)), list(sampler(epoch=1))
    assert epoch0 != epoch1
    assert sorted(map(sorted, epoch0)) != sorted(map(sorted, epoch1))  # different batches, not only order
    assert list(sampler(epoch=1)) == epoch1
    assert list(sampler(epoch=1, seed=8)) != epoch1
    s = sampler(epoch=0)
    assert list(s) == epoch0
    s.set_epoch(1)
    assert list(s) == epoch1


def test_adding_a_task_leaves_other_tasks_batches_unchanged() -> None:
    def batches_of(sizes: dict[str, int]) -> set[tuple[int, ...]]:
        return {tuple(row for _, row in b) for b in sampler(sizes, epoch=3) if task_of(b) == "rte"}

    assert batches_of({"rte": 16}) == batches_of({"mnli": 37, "rte": 16})


def test_mix_opt_puts_auxiliary_batches_first_and_limits_them_by_ratio() -> None:
    sizes = {"main": 20, "aux1": 12, "aux2": 8}  # 5 main batches, 3 + 2 auxiliary
    for epoch in range(5):
        tasks = [
            task_of(b) for b in sampler(sizes, strategy=MixOptStrategy(ratio=0.4, mix_opt=1), epoch=epoch)
        ]
        assert len(tasks) == 2 + 5  # floor(0.4 * 5) = 2 auxiliary batches
        assert set(tasks[:2]) <= {"aux1", "aux2"} and tasks[2:] == ["main"] * 5

    s = sampler(sizes, strategy=MixOptStrategy(ratio=0, mix_opt=1))
    batches = list(s)
    assert [task_of(b) for b in batches[5:]] == ["main"] * 5
    assert Counter(task_of(b) for b in batches[:5]) == {"aux1": 3, "aux2": 2}
    assert len({pair for b in batches for pair in b}) == 40  # every row once

    # A ratio above what the auxiliary tasks have keeps all of theirs; each chosen batch is distinct.
    big = [task_of(b) for b in sampler(sizes, strategy=MixOptStrategy(ratio=10, mix_opt=1))]
    assert Counter(big) == {"main": 5, "aux1": 3, "aux2": 2}


def test_mix_opt_zero_shuffles_everything() -> None:
    orders = [
        [task_of(b) for b in sampler({"main": 20, "aux": 20}, strategy=MixOptStrategy(0, 0), epoch=e)]
        for e in range(6)
    ]
    assert all(Counter(order) == {"main": 5, "aux": 5} for order in orders)
    assert any(order.index("main") < max(i for i, t in enumerate(order) if t == "aux") for order in orders)
    assert any(order[0] == "main" for order in orders)


def _binomial_ok(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_temperature_one_is_size_proportional() -> None:
    sizes = {"a": 9000, "b": 900, "c": 100}
    n_batches = {"a": 900, "b": 90, "c": 10}
    strategy = TemperatureStrategy(1.0)
    np.testing.assert_allclose(strategy.probabilities(n_batches, sizes), [0.9, 0.09, 0.01])
    names = strategy.schedule(n_batches, sizes, np.random.default_rng(0))
    assert len(names) == 1000
    many = [n for seed in range(20) for n in strategy.schedule(n_batches, sizes, np.random.default_rng(seed))]
    counts = Counter(many)
    for task, p in zip("abc", (0.9, 0.09, 0.01), strict=True):
        assert _binomial_ok(counts[task], len(many), p), (task, counts[task])


def test_temperature_large_is_uniform_and_two_is_the_square_root() -> None:
    sizes = {"a": 9000, "b": 900, "c": 100}
    n_batches = {"a": 900, "b": 90, "c": 10}
    hot = TemperatureStrategy(1e9)
    np.testing.assert_allclose(hot.probabilities(n_batches, sizes), [1 / 3] * 3, rtol=1e-6)
    many = [n for seed in range(20) for n in hot.schedule(n_batches, sizes, np.random.default_rng(seed))]
    counts = Counter(many)
    assert all(_binomial_ok(counts[t], len(many), 1 / 3) for t in "abc"), counts
    root = np.sqrt([9000, 900, 100])
    np.testing.assert_allclose(TemperatureStrategy(2).probabilities(n_batches, sizes), root / root.sum())


def test_temperature_cycles_a_small_task_through_reshuffled_batches() -> None:
    s = sampler({"small": 8, "big": 80}, strategy=TemperatureStrategy(1e9), epoch=2)
    batches = list(s)
    assert len(batches) == len(s) == 2 + 20
    small = [sorted(row for _, row in b) for b in batches if task_of(b) == "small"]
    assert len(small) > 4  # ~11 expected: it cycles
    for cycle in range(len(small) // 2):
        assert sorted(small[2 * cycle] + small[2 * cycle + 1]) == list(range(8))
    big = [row for b in batches if task_of(b) == "big" for _, row in b]
    assert len(big) == len(set(big))  # drawn fewer times than it has batches: no repeats


def test_two_ranks_match_one_rank_with_twice_the_batch() -> None:
    sizes = {"a": 32, "b": 16}
    one = list(sampler(sizes, batch_size=8, epoch=4))
    r0 = list(sampler(sizes, batch_size=4, rank=0, world_size=2, epoch=4))
    r1 = list(sampler(sizes, batch_size=4, rank=1, world_size=2, epoch=4))
    assert len(one) == len(r0) == len(r1) == 6
    for whole, b0, b1 in zip(one, r0, r1, strict=True):
        assert task_of(b0) == task_of(b1) == task_of(whole)
        assert not set(b0) & set(b1)
        assert b0 + b1 == whole


def test_distributed_partial_batch_wraps_around() -> None:
    sizes = {"a": 37, "tiny": 3}
    one = list(sampler(sizes, batch_size=8, epoch=1))
    ranks = [list(sampler(sizes, batch_size=4, rank=r, world_size=2, epoch=1)) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 5 + 1
    seen: Counter[tuple[str, int]] = Counter()
    for whole, b0, b1 in zip(one, *ranks, strict=True):
        assert len(b0) == len(b1) == 4  # no short or empty rank batch
        assert task_of(b0) == task_of(b1)
        assert (b0 + b1)[: len(whole)] == whole  # one rank keeps the partial batch; two ranks fill it
        seen.update(b0 + b1)
    assert {pair for pair in seen if pair[0] == "a"} == {("a", i) for i in range(37)}
    assert sum(n - 1 for pair, n in seen.items() if pair[0] == "a") == 3  # 3 rows seen twice
    assert {pair for pair in seen if pair[0] == "tiny"} == {("tiny", i) for i in range(3)}


def test_resume_continues_at_the_next_batch() -> None:
    full = list(sampler(epoch=2))
    first = sampler(epoch=2)
    it = iter(first)
    consumed = [next(it) for _ in range(5)]
    assert consumed == full[:5]
    state = first.state_dict()
    assert json.loads(json.dumps(state)) == state  # primitives only
    assert (state["epoch"], state["steps"]) == (2, 5)

    resumed = MultiTaskBatchSampler(SIZES, 4, ProportionalStrategy(), seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a training loop calls this again: it must not lose the position
    assert list(resumed) == full[5:]
    resumed.set_epoch(3)
    assert list(resumed) == list(sampler(epoch=3))


def test_resume_with_steps_consumed_override_and_mismatch() -> None:
    s = sampler(epoch=1)
    list(s)  # a prefetching DataLoader ran ahead; the trainer knows it trained on 3 steps
    state = s.state_dict(steps_consumed=3)
    resumed = sampler(epoch=0)
    resumed.load_state_dict(state)
    assert list(resumed) == list(sampler(epoch=1))[3:]
    with pytest.raises(UserError, match="global_batch_size"):
        sampler(batch_size=8).load_state_dict(state)


def test_bucketing_reduces_padding_and_covers_every_row_once() -> None:
    rng = np.random.default_rng(0)
    sizes = {"a": 640, "b": 320}
    lengths = {
        task: np.where(rng.random(n) < 0.1, rng.integers(200, 500, n), rng.integers(8, 40, n))
        for task, n in sizes.items()
    }

    def padding(bucket_window: int) -> float:
        s = sampler(sizes, batch_size=8, lengths=lengths, bucket_window=bucket_window, epoch=1)
        batches = list(s)
        pairs = [pair for b in batches for pair in b]
        assert len(pairs) == len(set(pairs)) == 960
        return padding_fraction([[lengths[t][i] for t, i in b] for b in batches])

    plain, bucketed = padding(0), padding(10)
    assert plain > 0.5
    assert bucketed < plain / 2
    s = sampler(sizes, batch_size=8, lengths=lengths, bucket_window=10, epoch=1)
    assert list(s) == list(sampler(sizes, batch_size=8, lengths=lengths, bucket_window=10, epoch=1))
    means = [np.mean([lengths[t][i] for t, i in b]) for b in s if task_of(b) == "a"]
    assert means != sorted(means) and means != sorted(means, reverse=True)  # batch order still shuffled


def test_bucketed_sampler_resumes_at_the_next_batch_and_differs_by_epoch() -> None:
    rng = np.random.default_rng(1)
    sizes = {"a": 200, "b": 90}
    lengths = {task: rng.integers(4, 300, n) for task, n in sizes.items()}

    def bucketed(epoch: int) -> MultiTaskBatchSampler:
        return sampler(sizes, batch_size=8, lengths=lengths, bucket_window=4, epoch=epoch)

    full = list(bucketed(3))
    first = bucketed(3)
    iterator = iter(first)
    consumed = [next(iterator) for _ in range(7)]
    resumed = bucketed(0)
    resumed.load_state_dict(first.state_dict())
    assert consumed + list(resumed) == full
    assert list(bucketed(4)) != full  # a new epoch reshuffles (and re-buckets) from (seed, epoch)


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank"):
        sampler(rank=2, world_size=2)
    with pytest.raises(ValueError, match="lengths"):
        sampler(bucket_window=2)
    with pytest.raises(ValueError, match="lengths"):
        sampler(lengths={"mnli": np.ones(37), "rte": np.ones(3), "sts": np.ones(9)}, bucket_window=2)


def test_make_strategy_registry() -> None:
    assert isinstance(make_strategy("proportional"), ProportionalStrategy)
    mix = make_strategy("MixOpt", ratio=0.5, mix_opt=1)
    assert isinstance(mix, MixOptStrategy) and (mix.ratio, mix.mix_opt) == (0.5, 1)
    hot = make_strategy(SamplingStrategyName.TEMPERATURE, temperature=3)
    assert isinstance(hot, TemperatureStrategy) and hot.temperature == 3.0
    assert all(isinstance(make_strategy(name), SamplingStrategy) for name in SamplingStrategyName)
    with pytest.raises(ValueError, match="expected one of"):
        make_strategy("annealed")
    with pytest.raises(ValueError, match="temperature"):
        make_strategy("proportional", temperature=2)
    with pytest.raises(ValueError, match="> 0"):
        make_strategy("temperature", temperature=0)


def test_eval_sampler_longest_first_and_restorable() -> None:
    lengths = np.array([5, 30, 7, 30, 1, 12, 9])
    s = EvalBatchSampler(7, 3, lengths=lengths)
    batches = list(s)
    assert batches == [[1, 3, 5], [6, 2, 0], [4]]
    assert len(s) == 3
    predictions = [10 * i for b in batches for i in b]  # a "model" that outputs 10 * row
    restored = np.empty(7, dtype=np.int64)
    restored[s.indices] = predictions
    assert restored.tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert list(EvalBatchSampler(5, 2)) == [[0, 1], [2, 3], [4]]


def test_eval_sampler_ranks_split_the_batches() -> None:
    lengths = np.arange(11)
    ranks = [EvalBatchSampler(11, 2, lengths=lengths, rank=r, world_size=3) for r in range(3)]
    assert [len(r) for r in ranks] == [2, 2, 2]
    assert list(ranks[0]) == [[10, 9], [4, 3]]
    everything = np.concatenate([r.indices for r in ranks])
    assert sorted(everything.tolist()) == list(range(11))
