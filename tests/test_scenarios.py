"""Label maps, active-unit masks and seed rules of every benchmark in every scenario."""

import numpy as np
import pytest

from cljax.presets import BENCHMARKS, SCENARIOS
from cljax.scenarios import active_units, context_classes, make_stream, output_units

LABELS = {  # dataset labels shaped like the real ones: classes in a mixed order
    10: np.tile(np.arange(10), 30)[np.random.default_rng(0).permutation(300)],
    100: np.tile(np.arange(100), 3)[np.random.default_rng(1).permutation(300)],
}


def stream_for(name, scenario, seed, active="all"):
    bench = BENCHMARKS[name]
    y = LABELS[10 if bench.n_classes <= 10 else 100]
    return bench, y, make_stream(bench, scenario, y, y, seed, active)


SPLIT = [n for n, b in BENCHMARKS.items() if not b.permuted]


@pytest.mark.parametrize("name", SPLIT)
@pytest.mark.parametrize("seed", [0, 3])
def test_split_contexts_partition_the_classes(name, seed):
    bench = BENCHMARKS[name]
    classes = context_classes(bench, seed)
    assert len(classes) == bench.n_contexts
    assert all(len(c) == bench.classes_per_context for c in classes)
    assert sorted(np.concatenate(classes).tolist()) == list(range(bench.n_classes))


def test_seed_zero_keeps_natural_order_and_other_seeds_shuffle():
    bench = BENCHMARKS["split-mnist"]
    assert [c.tolist() for c in context_classes(bench, 0)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [c.tolist() for c in context_classes(bench, 1)] != [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [c.tolist() for c in context_classes(bench, 1)] == [c.tolist() for c in context_classes(bench, 1)]


@pytest.mark.parametrize("name", SPLIT)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_split_targets_and_indices(name, scenario):
    bench, y, stream = stream_for(name, scenario, seed=5)
    cpc = bench.classes_per_context
    classes = context_classes(bench, 5)
    for c in range(bench.n_contexts):
        rows = np.asarray(stream.train_idx[c, : int(stream.train_n[c])])
        assert set(y[rows].tolist()) == set(classes[c].tolist())  # exactly this context's samples
        assert len(rows) == np.isin(y, classes[c]).sum()
        targets = np.asarray(stream.label_map[c])[y[rows]]
        if scenario == "domain":
            assert sorted(set(targets.tolist())) == list(range(cpc))
        else:
            assert sorted(set(targets.tolist())) == list(range(c * cpc, (c + 1) * cpc))


@pytest.mark.parametrize("name", list(BENCHMARKS))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_active_units(name, scenario):
    bench = BENCHMARKS[name]
    mask = active_units(bench, scenario)
    cpc, n_ctx = bench.classes_per_context, bench.n_contexts
    assert mask.shape == (n_ctx, output_units(bench, scenario))
    if scenario == "task":
        for c in range(n_ctx):
            assert np.flatnonzero(mask[c]).tolist() == list(range(c * cpc, (c + 1) * cpc))
    else:
        assert mask.all()
    assert output_units(bench, scenario) == (cpc if scenario == "domain" else cpc * n_ctx)


def test_class_il_seen_so_far():
    mask = active_units(BENCHMARKS["split-mnist"], "class", "seen")
    assert [int(m.sum()) for m in mask] == [2, 4, 6, 8, 10]
    assert mask[1, :4].all() and not mask[1, 4:].any()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_permuted_mnist(scenario):
    bench, y, stream = stream_for("perm-mnist", scenario, seed=0)
    perms = np.asarray(stream.pixel_perm)
    assert perms.shape == (10, 32 * 32)
    np.testing.assert_array_equal(perms[0], np.arange(1024))  # seed 0: first context unpermuted
    assert all(sorted(p.tolist()) == list(range(1024)) for p in perms)
    assert len({p.tobytes() for p in perms}) == 10
    assert (np.asarray(stream.train_n) == len(y)).all()
    labels = np.asarray(stream.label_map)
    for c in range(10):
        expected = np.arange(10) if scenario == "domain" else np.arange(10) + 10 * c
        np.testing.assert_array_equal(labels[c], expected)
    _, _, other = stream_for("perm-mnist", scenario, seed=2)
    assert not np.array_equal(np.asarray(other.pixel_perm)[0], np.arange(1024))  # other seeds permute all


def test_contexts_have_equal_shapes():
    _, _, stream = stream_for("split-mnist", "class", seed=0)
    assert stream.train_idx.shape[0] == 5 and stream.test_idx.shape[0] == 5
    assert stream.label_map.shape == (5, 10)


def test_unknown_scenario():
    with pytest.raises(ValueError, match="task, domain, class"):
        make_stream(BENCHMARKS["split-mnist"], "online", LABELS[10], LABELS[10], 0)


def test_streams_of_different_seeds_stack():
    from cljax.scenarios import stack_streams

    y = np.repeat(np.arange(10), np.arange(10) + 5)  # unequal class sizes: contexts differ in length per seed
    bench = BENCHMARKS["split-mnist"]
    streams = [make_stream(bench, "class", y, y, seed) for seed in (0, 1, 2)]
    stacked = stack_streams(streams)
    assert stacked.train_idx.shape[0] == 3
    for i, s in enumerate(streams):
        n = np.asarray(s.train_n)
        for c in range(5):
            np.testing.assert_array_equal(stacked.train_idx[i, c, : n[c]], s.train_idx[c, : n[c]])
