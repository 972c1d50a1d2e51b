"""The table machinery end to end on a tiny configuration, and the tolerance rule."""

from __future__ import annotations

import json

import pytest

from cljax.cli import main
from cljax.tables import TABLES, Method, Table, markdown, run_table, tolerance
from tests.conftest import SHARED_DATA


def test_tolerance_rule():
    assert tolerance(None, 20) == 2.0
    assert tolerance(0.02, 20) == 2.0
    assert tolerance(3.64, 20) == pytest.approx(3 * 3.64)
    assert tolerance(1.0, 5) == pytest.approx(3 * 2.0)  # SEM part widened by sqrt(20 / 5)


def test_tables_name_published_values():
    nmi = TABLES["nmi2022-split-mnist"]
    none = next(m for m in nmi.methods if m.strategy == "none")
    assert none.published["class"] == (19.89, 0.02)
    assert nmi.seeds == 20 and nmi.first_seed == 2


def _record(strategy: str, scenario: str, cores: int) -> dict:
    return {
        "method": strategy.title(), "strategy": strategy, "scenario": scenario, "seeds": 1,
        "mean": 50.0, "sem": 0.0, "published_mean": None, "published_sem": None, "difference": None,
        "tolerance": None, "flagged": False, "train_seconds": 60.0, "wall_seconds": 90.0,
        "seed_list": [2], "device_kind": "cpu", "cpu_cores": cores, "reused_from": None,
        "acc_matrix": [[[50.0]]],
    }  # fmt: skip


def test_summary_says_how_many_cores_each_cell_ran_on():
    table = TABLES["nmi2022-perm-mnist"]
    one = markdown(table, [_record("none", "task", 1), _record("none", "class", 1)])
    assert "2 cells; seed 2 (one seed: means without SEM); device cpu (1 CPU core per cell); " in one
    assert "wall time of all cells 3.0 min." in one
    assert "| None | 50.00 | 50.00 |" in one, "one seed has no SEM to show"
    assert "⚠" not in one, "no published value, so no tolerance rule to state"
    mixed = markdown(table, [_record("none", "task", 2), _record("none", "class", 1)])
    assert "(1 or 2 CPU cores per cell)" in mixed


def test_a_table_on_pretrained_conv_layers_names_each_seeds_set_once():
    def conv(seed, acc, digest):
        return {"name": f"s{seed}", "seed": seed, "epochs": 100, "test_accuracy": acc, "sha256": digest * 64}

    table = TABLES["nmi2022-split-cifar100"]
    two = {"seed_list": [2, 3], "pretrained": [conv(2, 80.49, "a"), conv(3, 80.1, "b")]}
    text = markdown(table, [_record("none", "class", 2) | two, _record("lwf", "class", 2) | two])
    line = next(x for x in text.splitlines() if x.startswith("Frozen conv layers"))
    assert line.count("seed 2 (80.49 %") == 1 and "seed 3 (80.10 %" in line and "sha256 aaaaaaaaaaaa" in line
    assert "Frozen conv layers" not in markdown(table, [_record("none", "class", 2)])


def test_the_tolerance_rule_is_stated_where_a_cell_is_compared():
    published = {"published_mean": 19.89, "published_sem": 0.02, "difference": 30.11, "tolerance": 2.0}
    far = _record("none", "class", 2) | published | {"flagged": True}
    text = markdown(TABLES["nmi2022-split-mnist"], [far])
    assert "Cells marked ⚠ differ from the published mean" in text
    assert "| None | 50.00 (pub. 19.89, +30.11) ⚠ |" in text
    assert "0 of 1 cells with a published value are within tolerance." in text


def test_cells_of_several_seeds_show_mean_and_sem():
    record = _record("none", "class", 2) | {"seed_list": [2, 3], "seeds": 2, "sem": 1.5}
    text = markdown(TABLES["nmi2022-perm-mnist"], [record])
    assert "| None | 50.00 ± 1.50 |" in text
    assert "1 cell; seeds 2, 3; " in text


def test_memory_sizes_in_the_labels_are_the_ones_that_run():
    import re

    from cljax.config import RunConfig

    checked = 0
    for table in TABLES.values():
        for method in table.methods:
            per_class = re.search(r"\((\d+)/class\)", method.label)
            total = re.search(r"total budget (\d+)", method.label)
            if not (per_class or total):
                continue
            for scenario in method.scenarios:
                config = RunConfig(
                    benchmark=table.benchmark,
                    scenario=scenario,
                    strategy=method.strategy,
                    options=method.options(scenario),
                )
                options = config.resolved().options
                if per_class:
                    assert options["budget"] == int(per_class.group(1)), (table.name, method.label)
                else:
                    assert options["total_budget"] == int(total.group(1)), (table.name, method.label)
                checked += 1
    assert checked >= 10


def test_tiny_table_end_to_end(tiny_data, tmp_path):
    import cljax

    table = Table(
        "tiny",
        "tiny table",
        "split-mnist",
        (
            Method("None", "none", {"task": (90.0, 1.0), "class": (19.9, 0.02)}),
            Method("Joint", "joint", {"class": (98.0, None)}, scenarios=("class",)),
        ),
        seeds=2,
        first_seed=0,
    )

    def run_fn(config, quiet):
        return cljax.run(config, quiet=quiet, dataset=tiny_data)

    summary = run_table(table, tmp_path, iters=5, run_fn=run_fn, quiet=True)
    assert {(c["strategy"], c["scenario"]) for c in summary["cells"]} == {
        ("none", "task"),
        ("none", "domain"),
        ("none", "class"),
        ("joint", "class"),
    }
    md = (tmp_path / "table.md").read_text()
    assert "| None |" in md and "pub. 19.90" in md
    assert (tmp_path / "table.csv").read_text().count("\n") == 5
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["environment"]["jax"]
    if saved["environment"]["backend"] == "cpu":  # cells say how many cores they ran on
        cores = saved["environment"]["cpu_cores"]
        assert f"({cores} CPU {'core' if cores == 1 else 'cores'} per cell)" in md
    none_class = next(c for c in saved["cells"] if c["strategy"] == "none" and c["scenario"] == "class")
    assert none_class["flagged"] == (abs(none_class["mean"] - 19.9) > 2.0)
    # A second invocation reuses the finished cells instead of running them again.
    calls = []
    run_table(table, tmp_path, iters=5, run_fn=lambda c, quiet: calls.append(c), quiet=True)
    assert calls == []


def test_a_cell_with_the_same_protocol_is_copied_from_the_table_beside_it(tiny_data, tmp_path):
    import cljax

    calls = []

    def run_fn(config, quiet):
        calls.append((config.strategy, config.scenario))
        return cljax.run(config, quiet=quiet, dataset=tiny_data)

    first = Table("first", "first", "split-mnist", (Method("None", "none"),), seeds=1, first_seed=0)
    # Same fine-tuning, but Class-IL over the classes seen so far: only the Class-IL cell differs.
    second = Table("second", "second", "split-mnist", (Method("None", "none", class_il_active="seen"),), 1, 0)
    run_table(first, tmp_path / "first", iters=3, run_fn=run_fn, quiet=True)
    calls.clear()
    summary = run_table(second, tmp_path / "second", iters=3, run_fn=run_fn, quiet=True)
    assert calls == [("none", "class")]
    cells = {c["scenario"]: c for c in summary["cells"]}
    assert cells["task"]["reused_from"] == "first/runs/none_none_task.json"
    assert cells["class"]["reused_from"] is None
    mine = json.loads((tmp_path / "second" / "runs" / "none_none_domain.json").read_text())
    theirs = json.loads((tmp_path / "first" / "runs" / "none_none_domain.json").read_text())
    assert mine["acc_matrix"] == theirs["acc_matrix"]
    assert "2 of them" in (tmp_path / "second" / "table.md").read_text()
    # Another iteration count is another protocol: nothing is copied.
    calls.clear()
    run_table(second, tmp_path / "second-long", iters=4, run_fn=run_fn, quiet=True)
    assert len(calls) == 3


def test_an_interrupted_cell_continues_from_its_last_context(tiny_data, tmp_path, monkeypatch):
    import cljax
    from cljax.checkpoint import Checkpoints

    def run_fn(config, quiet, checkpoint_dir=None, resume=False):
        return cljax.run(config, quiet=quiet, dataset=tiny_data, checkpoint_dir=checkpoint_dir, resume=resume)

    lwf = Method("LwF", "lwf", scenarios=("class",))
    table = Table("t", "t", "split-mnist", (lwf,), seeds=1, first_seed=0)
    whole, cut = tmp_path / "a" / "whole", tmp_path / "b" / "cut"  # apart, so no cell is copied across
    run_table(table, whole, iters=4, run_fn=run_fn, quiet=True)

    save, restore, continued_after = Checkpoints.save, Checkpoints.restore, []

    def save_then_stop(self, contexts_done, state, progress):
        save(self, contexts_done, state, progress)
        if contexts_done == 2:
            raise KeyboardInterrupt

    def noted_restore(self, state_like):
        restored = restore(self, state_like)
        continued_after.append(None if restored is None else restored[0])
        return restored

    monkeypatch.setattr(Checkpoints, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_table(table, cut, iters=4, run_fn=run_fn, quiet=True)
    kept = cut / "checkpoints" / "lwf_lwf_class"
    assert kept.is_dir() and not (cut / "runs" / "lwf_lwf_class.json").exists()
    monkeypatch.setattr(Checkpoints, "save", save)
    monkeypatch.setattr(Checkpoints, "restore", noted_restore)
    run_table(table, cut, iters=4, run_fn=run_fn, quiet=True)
    assert continued_after == [2], "the second invocation continues after context 2"
    whole_cell, cut_cell = (json.loads((d / "runs" / "lwf_lwf_class.json").read_text()) for d in (whole, cut))
    assert cut_cell["acc_matrix"] == whole_cell["acc_matrix"]
    assert not kept.exists(), "a finished cell's checkpoints are removed"


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="real MNIST not available")
def test_table_command(tmp_path, capsys):
    argv = [
        "table",
        "nmi2022-split-mnist",
        "--out-dir",
        str(tmp_path),
        "--seeds",
        "2",
        "--iters",
        "10",
        "--methods",
        "none",
        "--scenarios",
        "class",
        "--data-dir",
        str(SHARED_DATA),
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "NMI-2022 Table 2" in out and "pub. 19.89" in out
    assert main(["table", "nope", "--out-dir", str(tmp_path)]) == 2
