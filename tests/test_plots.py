"""Figures: cljax.plots from RunResults, dicts and files; tables and plots say when matplotlib is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cljax.cli import main
from cljax.plots import load_runs, matplotlib_missing, plot_runs
from cljax.results import RunResult
from cljax.tables import Method, Table, run_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_result(
    strategy: str = "none", scenario: str = "class", seeds: int = 2, contexts: int = 5
) -> RunResult:
    """A RunResult whose numbers agree with each other: seed s forgets a little more than seed s - 1."""
    acc = np.zeros((seeds, contexts, contexts))
    for s in range(seeds):
        for i in range(contexts):
            acc[s, i, : i + 1] = 95.0 - 10.0 * (i - np.arange(i + 1)) - s
    final = acc[:, -1].mean(axis=1)
    return RunResult(
        benchmark="split-mnist",
        scenario=scenario,
        strategy=strategy,
        seeds=list(range(seeds)),
        acc_matrix=acc.tolist(),
        initial_acc=np.full((seeds, contexts), 10.0).tolist(),
        final_avg_acc=final.tolist(),
        mean=float(final.mean()),
        sem=float(final.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else 0.0,
        forgetting=[0.0] * seeds,
        bwt=[0.0] * seeds,
        fwt=[0.0] * seeds,
        train_seconds=1.0,
        compile_seconds=0.5,
        iterations_per_second=100.0,
        context_loss=np.ones((seeds, contexts)).tolist(),
        config={},
    )


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib as if it were not installed (importing it fails, find_spec finds nothing)."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_load_runs_takes_run_results_dicts_and_files(tmp_path):
    result = fake_result()
    path = result.save(tmp_path / "r.json")
    runs = load_runs([result, result.to_dict(), path, str(path)])
    assert len(runs) == 4 and all(run == result.to_dict() for run in runs)
    assert load_runs(result) == [result.to_dict()], "one run need not be wrapped in a list"
    with pytest.raises(ValueError, match="acc_matrix"):
        load_runs([{"strategy": "none"}])
    with pytest.raises(TypeError, match="RunResult"):
        load_runs([42])


def test_plot_runs_draws_run_results(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_runs([fake_result("none"), fake_result("er", seeds=1)], tmp_path / "fig.png")
    assert out == tmp_path / "fig.png"
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000
    single = plot_runs(fake_result(), tmp_path / "one.png")
    assert single.read_bytes()[:8] == PNG_MAGIC


def test_plot_runs_of_a_real_run(tiny_data, tmp_path):
    pytest.importorskip("matplotlib")
    import cljax

    result = cljax.run(
        scenario="class", strategy="none", seeds=1, iters=5, batch_size=16, dataset=tiny_data, quiet=True
    )
    out = plot_runs([result], tmp_path / "fig.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_runs_needs_some_runs(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        plot_runs([], tmp_path / "fig.png")


def test_without_matplotlib_plots_say_how_to_install_it(no_matplotlib, tmp_path, capsys):
    message = matplotlib_missing("plot")
    assert message is not None and "matplotlib is not installed" in message and "pip install" in message
    with pytest.raises(ImportError, match="pip install"):
        plot_runs([fake_result()], tmp_path / "fig.png")
    path = fake_result().save(tmp_path / "r.json")
    assert main(["plot", str(path), "--out", str(tmp_path / "fig.png")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install" in err
    assert not (tmp_path / "fig.png").exists()


def _tiny_table() -> Table:
    return Table(
        "tiny", "tiny table", "split-mnist", (Method("None", "none", scenarios=("class",)),), seeds=2
    )


def _fake_run(config, quiet):
    return fake_result(config.strategy, config.scenario, seeds=config.seeds)


def test_table_draws_its_figures(tmp_path):
    pytest.importorskip("matplotlib")
    run_table(_tiny_table(), tmp_path, run_fn=_fake_run, quiet=True)
    for name in ("final_accuracy.png", "average_accuracy.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_without_matplotlib_a_table_says_its_figures_are_missing(no_matplotlib, tmp_path, capsys):
    run_table(_tiny_table(), tmp_path, run_fn=_fake_run, quiet=True)
    assert (tmp_path / "table.md").exists()
    assert not list(tmp_path.glob("*.png"))
    err = capsys.readouterr().err
    assert "final_accuracy.png" in err and "matplotlib is not installed" in err and "pip install" in err
