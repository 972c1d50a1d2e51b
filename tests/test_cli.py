"""The command line: one-line errors that list the valid choices, before any data is read or compiled."""

from __future__ import annotations

import json

import pytest

from cljax.cli import main, main_job_strategies
from tests.conftest import SHARED_DATA


def error_of(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["run", "--strategy", "fine-tune"],
            "strategy: unknown value 'fine-tune'; choose one of: none, joint",
        ),
        (
            ["run", "--benchmark", "split-mnst"],
            "benchmark: unknown value 'split-mnst'; choose one of: split-mnist",
        ),
        (
            ["run", "--scenario", "incremental"],
            "scenario: unknown value 'incremental'; choose one of: task, domain",
        ),
        (["run", "--seeds", "0"], "seeds: must be a positive integer"),
        (["run", "--iters", "-3"], "iters: must be a positive integer"),
        (["run", "--lr", "0"], "lr: must be a finite number > 0"),
        (["run", "--model", "resnet"], "model: unknown value 'resnet'; choose one of: mlp"),
        (
            ["run", "--class-il-active", "some"],
            "class_il_active: unknown value 'some'; choose one of: all, seen",
        ),
        (
            ["run", "--strategy", "none", "--temperature", "2"],
            "options: 'none' has no hyperparameter 'temperature'",
        ),
        (["run", "--strategy", "none", "--option", "oops"], "options: expected KEY=VALUE"),
    ],
)
def test_bad_input_is_one_line_with_choices(capsys, argv, expected):
    code, err = error_of(capsys, [*argv, "--data-dir", "/nonexistent", "--no-download"])
    assert code == 2
    assert err.startswith("cljax: error: ")
    assert expected in err
    assert "\n" not in err


def test_missing_data_lists_the_places_tried(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CLJAX_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("CLJAX_CACHE_DIR", str(tmp_path / "cache"))
    code, err = error_of(
        capsys, ["run", "--strategy", "none", "--data-dir", str(tmp_path / "d"), "--no-download"]
    )
    assert code == 1
    assert str(tmp_path / "d") in err and str(tmp_path / "env") in err and str(tmp_path / "cache") in err


def test_existing_output_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "results.json"
    out.write_text("precious")
    code, err = error_of(capsys, ["run", "--strategy", "none", "--out", str(out)])
    assert code == 2 and "--overwrite" in err
    assert out.read_text() == "precious"


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in (
        "split-mnist",
        "perm-mnist",
        "split-fmnist",
        "split-cifar10",
        "split-cifar100",
        "Task-IL",
        "Domain-IL",
        "Class-IL",
        "none",
        "joint",
    ):
        assert name in text
    streams = [line.split()[0] for line in text.splitlines() if "[also task-free: --stream]" in line]
    assert streams == [
        "none", "agem", "er", "ewc", "gen-classifier", "icarl", "lwf", "online-ewc", "separate-networks",
        "si", "xdg",
    ]  # fmt: skip


def test_main_job_compares_fine_tuning_with_the_best_method():
    names = main_job_strategies()
    assert names[0] == "none" and len(names) == 2 and names[1] != "none"


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="real MNIST not available")
def test_run_writes_json_and_keeps_compiled_programs(capsys, tmp_path, disk_cache):
    out = tmp_path / "r.json"
    argv = [
        "run",
        "--strategy",
        "none",
        "--scenario",
        "task",
        "--seeds",
        "2",
        "--iters",
        "20",
        "--data-dir",
        str(SHARED_DATA),
        "--no-download",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "final average accuracy" in printed and "Task-IL" in printed
    result = json.loads(out.read_text())
    assert result["strategy"] == "none" and result["scenario"] == "task" and len(result["acc_matrix"]) == 2
    assert 50 < result["mean"] <= 100  # Task-IL after 20 iterations: far above chance
    assert result["environment"]["compilation_cache"] and any(disk_cache[0].iterdir())


def test_the_table_command_names_every_table(capsys, monkeypatch):
    from cljax.cli import build_parser
    from cljax.tables import TABLES

    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside names
    with pytest.raises(SystemExit):
        build_parser().parse_args(["table", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(name in shown for name in TABLES), shown
