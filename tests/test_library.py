"""cljax as a library: a user's method, protocol and data through the public doors, and the model out."""

from __future__ import annotations

import json
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax
from cljax.cli import main
from tests.conftest import synthetic_dataset

TWELVE = synthetic_dataset(n_classes=12, per_class=40, test_per_class=15, seed=3)
MINE = cljax.Benchmark(name="mine", n_contexts=4, classes_per_context=3, iters=60, batch_size=32)


def l2_pull(setup: cljax.Setup, options) -> cljax.Strategy:
    """Fine-tuning plus strength/2 ||params - previous params||^2 (written with public names only)."""
    strength = float(options["strength"])

    def init(key, images, stream):
        classifier = cljax.init_classifier(setup, key)
        return {"classifier": classifier, "anchor": classifier.params, "seen": jnp.zeros((), jnp.int32)}

    def step(state, images, stream, context, key):
        batch = cljax.sample_context(setup.info, images, stream, context, key, setup.batch_size)

        def loss_fn(params):
            pull = sum(
                jnp.sum((p - a) ** 2)
                for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(state["anchor"]), strict=True)
            )
            return (
                cljax.classification_loss(setup, params, batch) + 0.5 * strength * (state["seen"] > 0) * pull
            )

        loss, grads = jax.value_and_grad(loss_fn)(state["classifier"].params)
        return {**state, "classifier": cljax.apply_gradients(setup, state["classifier"], grads)}, {
            "loss": loss
        }

    def end_context(state, images, stream, context, key):
        return {**state, "anchor": state["classifier"].params, "seen": state["seen"] + 1}

    def predict(state, x):
        return setup.model.apply(state["classifier"].params, x)

    return cljax.Strategy(init, step, end_context, predict, params=lambda state: state["classifier"].params)


@pytest.fixture(scope="module")
def registered():
    spec = cljax.register_strategy("test-l2", l2_pull, summary="L2 pull", defaults={"strength": 0.01})
    yield spec
    cljax.REGISTRY.pop("test-l2", None)


# --------------------------------------------------------------------------------------- strategies


def test_a_registered_strategy_runs_by_name_and_records_its_name_and_options(registered):
    result = cljax.run(
        benchmark=MINE, dataset=TWELVE, strategy="test-l2", options={"strength": 0.5}, quiet=True
    )
    assert result.strategy == "test-l2"
    assert result.config["strategy"] == "test-l2" and result.config["options"] == {"strength": 0.5}
    assert result.config["model"] == "mlp" and result.config["protocol"]["n_contexts"] == 4
    assert np.asarray(result.acc_matrix).shape == (1, 4, 4)
    assert result.acc_matrix[0][0][0] > 60  # learned the first context (chance is 33 %)


def test_register_strategy_refuses_duplicates_bad_names_and_unknown_options(registered):
    with pytest.raises(ValueError, match="already registered"):
        cljax.register_strategy("test-l2", l2_pull)
    with pytest.raises(ValueError, match="without spaces"):
        cljax.register_strategy("my method", l2_pull)
    with pytest.raises(ValueError, match="scenarios"):
        cljax.register_strategy("x-only", l2_pull, scenarios=("online",))
    with pytest.raises(cljax.ConfigError, match="has no hyperparameter 'strenght'; it takes: strength"):
        cljax.run(benchmark=MINE, dataset=TWELVE, strategy="test-l2", options={"strenght": 1.0}, quiet=True)


def test_the_decorator_form_registers_and_returns_the_function():
    @cljax.register_strategy("test-decorated", scenarios=("task",))
    def decorated(setup, options):
        """A test strategy."""
        return l2_pull(setup, {"strength": 0.0})

    try:
        assert cljax.REGISTRY["test-decorated"].build is decorated
        assert cljax.REGISTRY["test-decorated"].summary == "A test strategy."
        with pytest.raises(cljax.ConfigError, match="not defined for the class scenario"):
            cljax.run(benchmark=MINE, dataset=TWELVE, strategy="test-decorated", quiet=True)
    finally:
        cljax.REGISTRY.pop("test-decorated")


def test_the_command_line_imports_a_users_module_and_runs_its_strategy(tmp_path, capsys):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        textwrap.dedent(
            """
            import cljax
            from cljax.strategies.finetune import finetune

            cljax.register_strategy("plugin-ft", finetune, summary="a plugin's fine-tuning", overwrite=True)
            """
        )
    )
    assert main(["list", "--import", str(plugin)]) == 0
    assert "plugin-ft" in capsys.readouterr().out
    out = tmp_path / "r.json"
    args = [
        "run",
        "--import",
        str(plugin),
        "--strategy",
        "plugin-ft",
        "--iters",
        "3",
        "--quiet",
        "--out",
        str(out),
    ]
    code = main([*args, "--data-dir", str(tmp_path / "nothing"), "--no-download"])
    # no MNIST in that folder: the strategy name was accepted, the data are what is missing
    assert code == 1 and "plugin-ft" in cljax.REGISTRY
    assert "mnist" in capsys.readouterr().err.lower()
    assert main(["run", "--import", "no_such_module_xyz", "--strategy", "none"]) == 2
    assert "no module named 'no_such_module_xyz'" in capsys.readouterr().err
    cljax.REGISTRY.pop("plugin-ft")


# ------------------------------------------------------------------------------------ benchmarks, data


def test_a_benchmark_takes_split_mnists_settings_for_what_it_does_not_name():
    bench = cljax.Benchmark(name="mine", n_contexts=4, classes_per_context=3)
    assert (bench.iters, bench.lr, bench.batch_size, bench.model, bench.n_classes) == (
        2000,
        1e-3,
        128,
        "mlp",
        12,
    )
    ordered = cljax.Benchmark(name="ordered", class_order=[(9, 1), (4, 0)])
    assert (ordered.n_contexts, ordered.classes_per_context, ordered.used_classes) == (2, 2, (9, 1, 4, 0))
    for bad, message in [
        (dict(n_contexts=0), "n_contexts: must be a positive integer"),
        (dict(class_order=[(0, 1), (2,)]), "same number of classes"),
        (dict(class_order=[(0, 1), (1, 2)]), "distinct"),
        (dict(lr=float("nan")), "lr: must be a finite number"),
        (dict(n_contexts=3, class_order=[(0, 1), (2, 3)]), "disagrees with class_order"),
    ]:
        with pytest.raises(ValueError, match=message):
            cljax.Benchmark(name="bad", **bad)


def test_an_explicit_class_order_trains_the_named_classes_in_that_order():
    bench = cljax.Benchmark(name="ordered", class_order=[(11, 3), (5, 0)], iters=40, batch_size=32)
    result = cljax.run(benchmark=bench, dataset=TWELVE, strategy="none", scenario="task", quiet=True)
    model = result.model
    test_y = TWELVE.test_y
    for context, classes in enumerate([(11, 3), (5, 0)], start=1):
        rows = np.isin(test_y, classes)
        predicted = result.predict(TWELVE.test_x[rows], context=context)
        assert set(np.unique(predicted)) <= set(classes)
        accuracy = 100 * np.mean(predicted == test_y[rows])
        assert accuracy == pytest.approx(result.acc_matrix[0][-1][context - 1], abs=1e-4)
    assert model.unit_classes[0, 0].tolist() == [11, 3, 5, 0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d._replace(num_classes=10, train_y=d.train_y % 10, test_y=d.test_y % 10),
         "has 10 classes but mine's protocol .* uses 12"),
        (lambda d: d._replace(train_y=np.where(d.train_y > 5, 0, d.train_y)), "classes 6, 7, .* no"),
        (lambda d: d._replace(train_x=d.train_x.astype(np.float32)), r"float images must lie in \[0, 1\]"),
        (lambda d: d._replace(train_x=d.train_x.astype(np.int64)), "must be uint8 .* or float"),
        (lambda d: d._replace(test_x=d.test_x[:, :20]), "differ from train_x's"),
        (lambda d: d._replace(train_y=d.train_y[:-1]), "one label per image"),
        (lambda d: d._replace(test_y=d.test_y + 1), r"labels must lie in 0..11"),
        (lambda d: d._replace(train_y=d.train_y.astype(np.float32)), "labels must be integers"),
        (lambda d: d._replace(train_x=d.train_x[:, :, :, 0, None][:, None]), r"\(N, H, W, C\)"),
    ],
)  # fmt: skip
def test_bad_user_data_stops_with_its_own_error_before_compiling(change, message, monkeypatch):
    compiled = []
    monkeypatch.setattr(cljax.engine, "compile_all", lambda programs: compiled.append(programs))
    with pytest.raises(cljax.DatasetError, match=message):
        cljax.run(benchmark=MINE, dataset=change(TWELVE), strategy="none", quiet=True)
    assert not compiled


def test_six_class_data_under_split_mnist_is_refused_not_reported_as_nan():
    six = synthetic_dataset(n_classes=6)
    with pytest.raises(cljax.DatasetError, match="has 6 classes but split-mnist's protocol .* uses 10"):
        cljax.prepare(cljax.RunConfig(strategy="none"), dataset=six)
    unlabelled = six._replace(num_classes=10)
    with pytest.raises(cljax.DatasetError, match="classes 6, 7, 8, 9 .* no train samples"):
        cljax.prepare(cljax.RunConfig(strategy="none"), dataset=unlabelled)


def test_float_images_in_the_unit_interval_train_like_their_uint8_originals():
    as_float = TWELVE._replace(
        train_x=TWELVE.train_x / np.float32(255), test_x=TWELVE.test_x / np.float32(255)
    )
    a = cljax.run(benchmark=MINE, dataset=TWELVE, strategy="none", quiet=True)
    b = cljax.run(benchmark=MINE, dataset=as_float, strategy="none", quiet=True)
    np.testing.assert_allclose(a.acc_matrix, b.acc_matrix, atol=1e-4)
    assert b.acc_matrix[0][0][0] > 60


def test_a_benchmark_without_data_asks_for_them():
    with pytest.raises(cljax.ConfigError, match="names no dataset; pass your arrays"):
        cljax.run(benchmark=MINE, strategy="none", quiet=True)


def test_a_model_with_the_wrong_output_width_is_named_before_compiling():
    class Seven(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(7)(x.reshape(x.shape[0], -1))

    with pytest.raises(
        cljax.ConfigError, match="gives outputs of shape \\(B, 7\\); the benchmark needs \\(B, 12\\)"
    ):
        cljax.prepare(cljax.RunConfig(benchmark=MINE, model=Seven()), dataset=TWELVE)


# ---------------------------------------------------------------------------------- the model out


@pytest.fixture(scope="module")
def two_seeds():
    return cljax.run(benchmark=MINE, dataset=TWELVE, strategy="er", seeds=2, first_seed=1, quiet=True)


def test_predict_on_raw_test_images_reproduces_the_reported_accuracy(two_seeds):
    for index, seed in enumerate(two_seeds.seeds):
        predicted = cljax.predict(two_seeds, TWELVE.test_x, seed=seed)
        accuracy = 100 * np.mean(predicted == TWELVE.test_y)
        # every context has the same number of test images, so the mean over contexts is the overall one
        assert accuracy == pytest.approx(two_seeds.final_avg_acc[index], abs=1e-4)
    with pytest.raises(ValueError, match="this run has seeds \\[1, 2\\], not 7"):
        two_seeds.predict(TWELVE.test_x, seed=7)
    with pytest.raises(ValueError, match="expected images of shape \\(N, 28, 28, 1\\)"):
        two_seeds.predict(TWELVE.test_x[:, :14])


def test_the_final_state_and_classifier_params_come_back_for_every_seed(two_seeds):
    leaves = jax.tree.leaves(two_seeds.state)
    assert all(leaf.shape[0] == 2 for leaf in leaves)
    p1, p2 = two_seeds.params(1), two_seeds.params(2)
    assert jax.tree.structure(p1) == jax.tree.structure(two_seeds.model.strategy.init(
        jax.random.key(0), None, None).params)  # fmt: skip
    assert not np.array_equal(jax.tree.leaves(p1)[0], jax.tree.leaves(p2)[0])
    custom = cljax.classifier_params(cljax.Strategy(*[None] * 4, params=lambda s: s["w"]), {"w": 3})
    assert custom == 3


def test_a_saved_model_loads_and_predicts_the_same(two_seeds, tmp_path):
    folder = two_seeds.save_model(tmp_path / "model")
    loaded = cljax.load_model(folder)
    for seed in two_seeds.seeds:
        np.testing.assert_array_equal(
            loaded.predict(TWELVE.test_x, seed=seed), two_seeds.predict(TWELVE.test_x, seed=seed)
        )
    with pytest.raises(FileExistsError, match="not empty"):
        two_seeds.save_model(folder)
    with pytest.raises(FileNotFoundError, match="no saved model"):
        cljax.load_model(tmp_path / "nowhere")


def test_a_saved_model_of_a_users_network_needs_the_network_to_load(tmp_path):
    class Small(nn.Module):
        n_out: int

        @nn.compact
        def __call__(self, x):
            return nn.Dense(self.n_out)(nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1))))

    result = cljax.run(benchmark=MINE, dataset=TWELVE, strategy="none", model=Small, quiet=True)
    assert result.config["model"] == "Small"
    folder = result.save_model(tmp_path / "small")
    with pytest.raises(cljax.ConfigError, match="not a registered model; pass it again"):
        cljax.load_model(folder)
    loaded = cljax.load_model(folder, model=Small)
    np.testing.assert_array_equal(loaded.predict(TWELVE.test_x), result.predict(TWELVE.test_x))


def test_a_result_file_loads_back_as_a_run_result(two_seeds, tmp_path):
    path = two_seeds.save(tmp_path / "r.json")
    loaded = cljax.RunResult.load(path)
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.acc_matrix == two_seeds.acc_matrix and loaded.model is None
    with pytest.raises(ValueError, match="no trained model"):
        loaded.predict(TWELVE.test_x)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not a cljax results file"):
        cljax.RunResult.load(tmp_path / "bad.json")


def test_a_registered_strategy_joins_a_published_table_as_an_extra_row(registered, tiny_data, tmp_path):
    from cljax.tables import TABLES, run_table

    def run_on_tiny(config, quiet):
        return cljax.run(config, dataset=tiny_data, batch_size=16, quiet=quiet)

    table = TABLES["nmi2022-split-mnist"]
    methods = ["none", "test-l2"]
    summary = run_table(
        table, tmp_path, seeds=1, iters=3, methods=methods, scenarios=["class"], run_fn=run_on_tiny
    )
    rows = {cell["strategy"]: cell for cell in summary["cells"]}
    assert set(rows) == {"none", "test-l2"}
    assert rows["test-l2"]["published_mean"] is None and rows["none"]["published_mean"] == 19.89
    assert "test-l2" in (tmp_path / "table.md").read_text()
    with pytest.raises(cljax.ConfigError, match="no strategy of that name is registered"):
        run_table(TABLES["nmi2022-split-mnist"], tmp_path, methods=["nope"], run_fn=run_on_tiny)
