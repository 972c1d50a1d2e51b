"""Task-free streams: no boundaries given, consolidation every N iterations, one program for the stream."""

from __future__ import annotations

import numpy as np
import pytest

import cljax
from cljax import engine
from cljax.cli import build_parser
from cljax.config import ConfigError

TINY = dict(benchmark="split-mnist", iters=8, batch_size=16, seeds=2, quiet=True)
STREAM = dict(stream="fuzzy-boundaries", fuzziness=2, update_every=4)


@pytest.mark.parametrize(
    ("strategy", "scenario"), [("none", "task"), ("none", "class"), ("si", "domain"), ("ewc", "domain")]
)
def test_an_academic_stream_consolidating_once_per_context_is_the_context_protocol(
    strategy, scenario, tiny_data
):
    # EWC's stream Fisher is over the samples it saw: 64 batches of 16 show it all 120 of each context
    iters = 64 if strategy == "ewc" else TINY["iters"]
    common = dict(strategy=strategy, scenario=scenario, dataset=tiny_data, **{**TINY, "iters": iters})
    by_context = cljax.run(**common)
    options = {"c": by_context.config["options"]["c"]} if strategy == "si" else {}  # the stream's own c: 10
    before = engine.programs_compiled()
    stream = cljax.run(stream="academic-setting", update_every=iters, options=options, **common)
    assert engine.programs_compiled() - before == 3  # init, one program for every segment, evaluate
    np.testing.assert_array_equal(stream.acc_matrix, by_context.acc_matrix)
    np.testing.assert_array_equal(stream.context_loss, by_context.context_loss)


def test_an_academic_stream_is_the_context_protocol_for_the_streams_replay_learner(tiny_data):
    """ER's stream learner (reservoir, replay from the last consolidation) run context by context and on
    an academic stream consolidating at the same points train the same: the engine draws the same batches
    and the memory fills the same way. The registered ``er`` itself is NMI-2022's class-balanced ER context
    by context and the reference's stream learner on streams, which differ by design."""
    from cljax.strategies.memory_replay import Budget
    from cljax.strategies.stream_replay import stream_er

    cljax.register_strategy(
        "test-stream-er", lambda setup, options: stream_er(setup, Budget(None, 30)), task_free=True
    )
    try:
        common = dict(strategy="test-stream-er", scenario="class", dataset=tiny_data, **TINY)
        by_context = cljax.run(**common)
        stream = cljax.run(stream="academic-setting", update_every=TINY["iters"], **common)
    finally:
        cljax.REGISTRY.pop("test-stream-er")
    np.testing.assert_array_equal(stream.acc_matrix, by_context.acc_matrix)
    np.testing.assert_array_equal(stream.state.memory.slot, by_context.state.memory.slot)
    assert np.asarray(stream.state.memory.count).tolist() == [[30], [30]]


# none, si and er count theirs in the tests above and below
@pytest.mark.parametrize("strategy", ["lwf", "agem", "icarl", "gen-classifier"])
def test_the_whole_stream_is_compiled_once(strategy, tiny_data):
    before = engine.programs_compiled()
    result = cljax.run(strategy=strategy, scenario="class", dataset=tiny_data, **STREAM, **TINY)
    assert engine.programs_compiled() - before == 3  # init, one stream segment, evaluate
    assert np.isfinite(result.context_loss).all() and len(result.acc_matrix[0]) == 5


def test_the_stream_defaults_are_the_references(tiny_data):
    common = dict(scenario="domain", dataset=tiny_data, stream="random", **{**TINY, "seeds": 1})
    si = cljax.run(strategy="si", **{**common, "iters": 100})
    er = cljax.run(strategy="er", **common)
    assert (si.config["options"]["c"], si.config["update_every"]) == (10.0, 100)  # SI: c 5e4 by context
    assert (er.config["options"]["total_budget"], er.config["update_every"]) == (100, 1)


def test_the_memory_fills_from_the_stream_as_it_passes(tiny_data):
    before = engine.programs_compiled()
    result = cljax.run(strategy="er", scenario="class", dataset=tiny_data, options={"total_budget": 20},
                       **STREAM, **TINY)  # fmt: skip
    assert engine.programs_compiled() - before == 3
    memory = result.state.memory
    seen = 5 * TINY["iters"] * TINY["batch_size"]
    assert np.asarray(memory.seen).tolist() == [seen, seen]  # every sample of the stream was offered
    assert np.asarray(memory.count).tolist() == [[20], [20]]
    contexts = np.asarray(memory.context)[:, 0]
    # a reservoir keeps every sample offered with equal probability: the whole stream is in it
    assert all(len(set(row.tolist())) >= 4 for row in contexts)
    np.testing.assert_array_equal(result.state.replay.context, result.state.memory.context)


def test_replay_from_the_stream_reduces_forgetting(tiny_data):
    common = dict(scenario="class", dataset=tiny_data, **STREAM, **TINY)
    none = cljax.run(strategy="none", **common)
    er = cljax.run(strategy="er", **common)
    assert er.mean > none.mean + 15, (er.mean, none.mean)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(strategy="dgr"), "'dgr' needs context boundaries and has no task-free form; strategies that"),
        (dict(stream="fuzzy"), "stream: unknown value 'fuzzy'"),
        (dict(update_every=3), "update_every: 3 does not divide the 8 iterations per context"),
        (dict(fuzziness=5), "use --fuzziness 4 or less"),
        (dict(class_il_active="seen"), "a task-free learner is not told which classes a context brings"),
    ],
)
def test_bad_streams_stop_before_compiling(changes, message, tiny_data):
    before = engine.programs_compiled()
    config = {"strategy": "none", "scenario": "class", "dataset": tiny_data, **STREAM, **TINY, **changes}
    with pytest.raises(ConfigError, match=message):
        cljax.run(**config)
    assert engine.programs_compiled() == before


def test_the_command_line_takes_the_stream_flags():
    line = "run --strategy er --stream fuzzy-boundaries --fuzziness 100 --update-every 5 --labels-per-batch"
    args = build_parser().parse_args(line.split())
    assert (args.stream, args.fuzziness, args.update_every, args.labels_per_batch) == (
        "fuzzy-boundaries",
        100,
        5,
        True,
    )


def test_an_interrupted_stream_resumes_to_the_same_numbers(tiny_data, tmp_path, monkeypatch):
    from tests.test_checkpoint_resume import INTERRUPTED_AFTER, run_interrupted, saved_steps

    sizes = {k: v for k, v in TINY.items() if k != "quiet"}
    config = cljax.RunConfig(strategy="er", scenario="class", **STREAM, **{**sizes, "seeds": 1})
    folder = tmp_path / "ckpt"
    run_interrupted(config, tiny_data, folder, monkeypatch)  # the memory and its snapshot are in the state
    assert saved_steps(folder)[-1] == INTERRUPTED_AFTER
    resumed = cljax.run(config, dataset=tiny_data, quiet=True, checkpoint_dir=folder, resume=True)
    straight = cljax.run(config, dataset=tiny_data, quiet=True)
    assert resumed.acc_matrix == straight.acc_matrix and resumed.context_loss == straight.context_loss
