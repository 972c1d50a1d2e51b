"""Hyperparameters as program inputs: one compilation for runs that differ only in them, sweeps as one
program per shape, results equal to separate runs, bad grids refused before compiling."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cljax
from cljax import engine
from cljax.sweep import parse_grid

TINY = dict(benchmark="split-mnist", iters=8, batch_size=16, seeds=2)


def test_two_runs_differing_only_in_a_continuous_hyperparameter_compile_once(tiny_data):
    common = dict(strategy="ewc", scenario="domain", dataset=tiny_data, quiet=True, **TINY)
    before = engine.programs_compiled()
    a = cljax.run(options={"lambda": 1e3}, **common)
    after_first = engine.programs_compiled()
    b = cljax.run(options={"lambda": 1e9}, **common)
    c = cljax.run(options={"lambda": 1e9}, lr=3e-4, **common)
    assert after_first - before == 3  # init, train, evaluate
    assert engine.programs_compiled() == after_first  # the second and third runs reuse them
    assert a.acc_matrix != b.acc_matrix != c.acc_matrix  # the values really are inputs
    assert b.config["options"]["lambda"] == 1e9 and c.config["lr"] == 3e-4


def test_a_sweep_equals_its_configurations_run_alone(tiny_data):
    grid = {"lambda": [1e2, 1e6, 1e10]}
    result = cljax.sweep(
        cljax.RunConfig(strategy="ewc", scenario="task", **TINY), grid, dataset=tiny_data, quiet=True
    )
    assert result.groups == 1 and result.programs_compiled == 3
    assert [entry["values"] for entry in result.configs] == [{"lambda": v} for v in grid["lambda"]]
    for entry, run in zip(result.configs, result.results, strict=True):
        alone = cljax.run(strategy="ewc", scenario="task", options=dict(entry["values"]), dataset=tiny_data,
                          quiet=True, **TINY)  # fmt: skip
        # on a CPU every run computes unbatched, whatever runs share its device: equal bit for bit
        np.testing.assert_array_equal(entry["acc_matrix"], alone.acc_matrix)
        np.testing.assert_array_equal(run.context_loss, alone.context_loss)
    assert result.best["mean"] == max(entry["mean"] for entry in result.configs)


def test_a_one_seed_run_equals_that_seed_beside_others(tiny_data):
    common = dict(strategy="ewc", scenario="domain", dataset=tiny_data, quiet=True, benchmark="split-mnist",
                  iters=8, batch_size=16)  # fmt: skip
    both = cljax.run(seeds=2, first_seed=3, **common)
    second = cljax.run(seeds=1, first_seed=4, **common)
    np.testing.assert_array_equal(both.acc_matrix[1], second.acc_matrix[0])
    np.testing.assert_array_equal(both.context_loss[1], second.context_loss[0])


def test_a_shape_changing_key_splits_the_grid_into_one_program_per_shape(tiny_data):
    config = cljax.RunConfig(strategy="er", scenario="class", **TINY)
    result = cljax.sweep(config, {"budget": [5, 10], "lr": [1e-3, 1e-2]}, dataset=tiny_data, quiet=True)
    assert result.groups == 2 and result.programs_compiled == 6
    assert [e["values"] for e in result.configs] == [
        {"budget": b, "lr": lr} for b in (5, 10) for lr in (1e-3, 1e-2)
    ]
    assert [e["options"]["budget"] for e in result.configs] == [5, 5, 10, 10]


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"lamda": [1.0]}, "has no hyperparameter 'lamda'; it takes: .*lambda"),
        ({"lambda": []}, "'lambda' has no values"),
        ({"lambda": [1.0, float("nan")]}, "non-finite value nan"),
        ({"lambda": [1.0, "big"]}, "mixes numbers and other values"),
        ({"lambda": [1.0, 1.0]}, "lists a value twice"),
        ({}, "nothing to sweep"),
    ],
)
def test_bad_grids_stop_with_one_line_before_compiling(grid, message, tiny_data, monkeypatch):
    monkeypatch.setattr(engine, "compile_all", lambda programs: pytest.fail("compiled"))
    with pytest.raises(cljax.ConfigError, match=message):
        cljax.sweep(cljax.RunConfig(strategy="ewc", **TINY), grid, dataset=tiny_data, quiet=True)


def test_parse_grid_reads_the_command_lines_values():
    assert parse_grid(["lambda=1e3,1e5", "budget=10,20", "generator=vae,gan"]) == {
        "lambda": [1000.0, 100000.0], "budget": [10, 20], "generator": ["vae", "gan"]}  # fmt: skip
    with pytest.raises(cljax.ConfigError, match="given twice"):
        parse_grid(["c=1", "c=2"])
    with pytest.raises(cljax.ConfigError, match="expected KEY=V1,V2"):
        parse_grid(["c"])


class Interrupted(BaseException):
    """Stands in for a kill: nothing on its way out catches it."""


def test_an_interrupted_sweep_continues_and_writes_its_files(tiny_data, tmp_path, monkeypatch):
    config = cljax.RunConfig(strategy="si", scenario="domain", **TINY)
    grid = {"c": [0.1, 100.0]}
    straight = cljax.sweep(config, grid, dataset=tiny_data, quiet=True)
    from cljax.checkpoint import Checkpoints

    saves = []
    save = Checkpoints.save

    def dies_before_the_third_save(self, contexts_done, state, progress):
        saves.append(contexts_done)
        if len(saves) == 3:
            raise Interrupted
        save(self, contexts_done, state, progress)

    monkeypatch.setattr(Checkpoints, "save", dies_before_the_third_save)
    with pytest.raises(Interrupted):
        cljax.sweep(config, grid, dataset=tiny_data, out=tmp_path, quiet=True)
    monkeypatch.setattr(Checkpoints, "save", save)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "program-0").iterdir()) == ["1", "2"]
    engine.clear_program_cache()
    resumed = cljax.sweep(config, grid, dataset=tiny_data, out=tmp_path, quiet=True)
    assert [e["acc_matrix"] for e in resumed.configs] == [e["acc_matrix"] for e in straight.configs]
    saved = json.loads((tmp_path / "sweep.json").read_text())
    keys = "benchmark scenario strategy grid configs best train_seconds compile_seconds programs_compiled"
    assert {*keys.split(), "environment"} <= set(saved)
    assert set(saved["configs"][0]) >= {"values", "final_avg_acc", "acc_matrix", "mean", "sem"}
    assert saved["environment"]["process_count"] == 1 and saved["environment"]["device_count"] >= 1
    assert "| c |" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "sweep.png").stat().st_size > 1000


def test_the_command_line_sweeps_and_refuses_a_bad_grid(capsys):
    from cljax.cli import main

    assert main(["sweep", "--strategy", "ewc", "--grid", "lamda=1,2"]) == 2
    assert "no hyperparameter 'lamda'" in capsys.readouterr().err
    assert main(["sweep", "--strategy", "ewc", "--grid", "lambda=1,inf"]) == 2
    assert "non-finite" in capsys.readouterr().err


def test_a_diverging_value_does_not_end_the_sweep_and_is_never_the_best(tiny_data):
    config = cljax.RunConfig(strategy="none", scenario="domain", **TINY)
    result = cljax.sweep(config, {"lr": [1e-3, 1e30]}, dataset=tiny_data, quiet=True)
    sane, huge = result.configs
    assert sane["diverged"] == [None, None] and all(d is not None for d in huge["diverged"])
    assert result.best["values"] == {"lr": 1e-3}
    assert "(loss not finite)" in result.markdown()
