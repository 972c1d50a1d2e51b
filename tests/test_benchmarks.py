"""The benchmark harness and the PyTorch reference, on tiny configs (the reference's tests need torch)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from benchmarks import run as bench

TINY = dict(iters=100, batch_size=32, lr=0.003)


@pytest.fixture(scope="module")
def torch():
    """torch, on one thread: tiny steps gain nothing from more, and lose a lot on a busy machine."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def reference_run(tiny_data, strategy: str, scenario: str = "class", iters: int = 3, **hyper):
    from benchmarks.torch_reference import Hyper, TorchConfig, run

    config = TorchConfig(
        strategy=strategy, scenario=scenario, iters=iters, device="cpu", hyper=Hyper(**hyper)
    )
    return run(config, tiny_data)


# ------------------------------------------------------------------------------------- torch reference


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
@pytest.mark.parametrize("strategy", ["none", "er", "lwf", "dgr"])
def test_every_strategy_runs_in_every_scenario(torch, tiny_data, strategy, scenario):
    result = reference_run(tiny_data, strategy, scenario, iters=2, batch_size=8, replay_batch=8)
    acc = np.asarray(result.acc_matrix)
    assert acc.shape == (5, 5)
    assert ((acc >= 0) & (acc <= 100)).all()
    assert np.isfinite(result.context_loss).all()
    assert result.final_avg_acc == pytest.approx(acc[-1].mean())


@pytest.fixture(scope="module")
def fine_tuned(torch, tiny_data):
    return np.asarray(reference_run(tiny_data, "none", **TINY).acc_matrix)


def test_fine_tuning_forgets_and_replay_remembers(torch, tiny_data, fine_tuned):
    assert np.diag(fine_tuned).min() > 90  # each context is learned...
    assert fine_tuned[-1, :-1].max() < 10  # ...and forgotten in Class-IL
    er = np.asarray(reference_run(tiny_data, "er", **TINY).acc_matrix)
    assert er[-1].mean() > fine_tuned[-1].mean() + 40


def test_task_il_masks_make_fine_tuning_forget_less(torch, tiny_data, fine_tuned):
    task = reference_run(tiny_data, "none", "task", **TINY)
    assert task.final_avg_acc > fine_tuned[-1].mean() + 20


def test_distillation_pads_unseen_classes_with_zero(torch):
    from benchmarks.torch_reference.strategies import distillation

    student, teacher = torch.randn(4, 10), torch.randn(4, 6)
    padded = torch.cat([torch.softmax(teacher / 2, 1), torch.zeros(4, 4)], 1)
    expected = -(padded * torch.log_softmax(student / 2, 1)).sum(1).mean()
    assert distillation(student, teacher, 2.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_split_matches_cljax_stream(torch, tiny_data):
    """The same samples in each context and the same targets as cljax's split-MNIST stream."""
    from benchmarks.torch_reference import SplitMNIST
    from cljax.presets import BENCHMARKS
    from cljax.scenarios import make_stream

    for scenario, seed in (("class", 0), ("domain", 3)):
        ours = SplitMNIST.build(tiny_data, scenario, seed, torch.device("cpu"))
        stream = make_stream(BENCHMARKS["split-mnist"], scenario, tiny_data.train_y, tiny_data.test_y, seed)
        for c in range(5):
            rows = np.array(stream.train_idx[c][: int(stream.train_n[c])])
            np.testing.assert_array_equal(np.sort(rows), np.sort(ours.train_rows[c].numpy()))
            targets = np.asarray(stream.label_map[c])[tiny_data.train_y[rows]]
            np.testing.assert_array_equal(targets, ours.train_y[torch.from_numpy(rows)].numpy())


def test_flop_count_matches_torch_flop_counter(torch):
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.torch_reference.models import mlp

    model = mlp(10)
    x, y = torch.rand(bench.BATCH_SIZE, 784), torch.randint(10, (bench.BATCH_SIZE,))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    assert counter.get_total_flops() == bench.mlp_step_flops(bench.BATCH_SIZE, 10) == 286_515_200


def test_compiled_mode_is_accepted(torch):
    from benchmarks.torch_reference import Hyper, TorchConfig

    TorchConfig(strategy="dgr", hyper=Hyper(compile=True)).check()
    with pytest.raises(ValueError, match="unknown strategy 'ewc'; choose one of: none, er, lwf, dgr"):
        TorchConfig(strategy="ewc").check()


# ---------------------------------------------------------------------------------------------- harness


@pytest.fixture
def npz(tmp_path, tiny_data):
    path = tmp_path / "data.npz"
    np.savez(
        path,
        train_x=tiny_data.train_x,
        train_y=tiny_data.train_y,
        test_x=tiny_data.test_x,
        test_y=tiny_data.test_y,
    )
    return str(path)


def spec(kind: str, data: str, **extra) -> dict:
    base = {"kind": kind, "strategy": "none", "scenario": "class", "iters": 2, "seeds": 1, "data": data}
    return {**base, "threads": 1, "device": "cpu", "precision": "tf32", **extra}


@pytest.fixture
def keep_affinity():
    """The in-process worker pins this process to one CPU: give it back its CPUs afterwards."""
    cpus = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, cpus)


def test_workers_report_every_metric(torch, npz, tmp_path, keep_affinity):
    for kind, extra in (("torch", {"compile": False}), ("cljax", {"seeds": 2})):
        out = tmp_path / f"{kind}.json"
        bench.worker_main(json.dumps(spec(kind, npz, **extra)), str(out))
        result = json.loads(out.read_text())
        for metric in set(bench.METRICS) - {"process_seconds"}:
            assert isinstance(result[metric], float) and result[metric] >= 0, (kind, metric)
        if kind == "cljax":
            assert result["seed_iterations_per_second"] == pytest.approx(2 * result["iterations_per_second"])


def test_measure_runs_a_fresh_pinned_process(torch):
    env = bench.worker_env(1, "cpu")
    assert env["OMP_NUM_THREADS"] == "1" and "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]
    task = {"kind": "matmul", "framework": "torch", "size": 64, "reps": 2, "threads": 1}
    result = bench.measure({**task, "device": "cpu", "precision": "fp32"}, env, timeout=120)
    assert "error" not in result, result
    assert len(result["cpus"]) == 1 and result["gflops"] > 0 and result["process_seconds"] > 0


def test_plan_skips_strategies_missing_from_the_registry(monkeypatch):
    import cljax.strategies

    monkeypatch.setattr(cljax.strategies, "REGISTRY", {"none": None, "er": None})
    args = bench.parse_args(["--strategies", "none,lwf", "--seeds", "5,20", "--torch-compile", "none"])
    specs, skipped = bench.plan(args)
    labels = [(s["strategy"], bench.label(s)) for s in specs]
    assert ("none", "cljax") in labels and ("none", "cljax x5") in labels and ("none", "cljax x20") in labels
    assert ("lwf", "cljax") not in labels
    assert any(s.startswith("cljax lwf: not in the cljax registry") for s in skipped)
    if bench._has_torch():
        assert ("lwf", "torch") in labels and ("none", "torch.compile") in labels
        assert ("lwf", "torch.compile") not in labels


def test_summary_and_markdown():
    def row(impl: str, seeds: int, rate: float, repeat: int) -> dict:
        metrics = dict.fromkeys(bench.METRICS, 1.0)
        metrics.update(iterations_per_second=rate, seed_iterations_per_second=seeds * rate, wall_seconds=10.0)
        return {"strategy": "none", "impl": impl, "seeds": seeds, "repeat": repeat, **metrics}

    rows = [row("cljax", 1, r, i) for i, r in enumerate((100.0, 300.0, 200.0))]
    rows += [row("cljax x5", 5, 150.0, 0), row("torch", 1, 50.0, 0), {"strategy": "none", "error": "x"}]
    summary = bench.median_summary(rows)
    cljax = next(e for e in summary if e["impl"] == "cljax")
    assert cljax["iterations_per_second"] == 200.0 and cljax["n"] == 3
    settings = {"scenario": "class", "threads": 2, "iters": 5, "precision": "fp32", "repeats": 3}
    report = {
        "machine": "cpu-test",
        "created": "now",
        "host": {"description": "test"},
        "versions": {"jax": "0"},
        "settings": {**settings, "device": "cpu", "seeds": [5], "strategies": ["none"]},
        "summary": summary,
        "flops": {"n_out": 10, "step_flops": bench.mlp_step_flops()},
        "matmul": {"size": 64, "jax": {"gflops": 100.0}},
        "skipped": ["lwf"],
        "errors": [],
    }
    text = bench.markdown(report)
    assert "| none | 4.00x | 1.00x | 5.00x |" in text  # it/s 200/50; wall 10/10; 5 x 10 s / 10 s
    assert "| cljax | 57.3 | 57.3 | - |" in text  # 286.5 MFLOP x 200 it/s against 100 GFLOP/s
    assert "- skipped: lwf" in text


def test_machine_slug_and_flops():
    assert bench.machine_slug("cpu", 2).startswith("cpu-") and "-2t-" in bench.machine_slug("cpu", 2)
    assert bench.slug("NVIDIA H200 (SXM)") == "nvidia-h200-sxm"
    # forward 2B(784*400 + 400*400 + 400*10); weight gradients as much; input gradients of layers 2 and 3
    assert bench.mlp_step_flops(128, 10) == 2 * 128 * (2 * 477_600 + 164_000)
    assert bench.mlp_step_flops(128, 2) < bench.mlp_step_flops(128, 10)


def test_layout_benchmark_compares_the_same_network():
    import jax
    import jax.numpy as jnp

    from benchmarks.linear_layout import in_out_layers
    from cljax.models import make_classifier

    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    with in_out_layers():  # the modules pick their layers when they are initialised or applied
        in_out = make_classifier("mlp", 10)
        p_in_out = in_out.init(jax.random.key(1), x)
        y_in_out = in_out.apply(p_in_out, x)
    out_in = make_classifier("mlp", 10)
    p_out_in = out_in.init(jax.random.key(1), x)
    for name in ("layers_0", "layers_1", "head"):
        kernel, weight = p_in_out["params"][name]["kernel"], p_out_in["params"][name]["weight"]
        np.testing.assert_array_equal(kernel, jnp.transpose(weight))
    np.testing.assert_allclose(y_in_out, out_in.apply(p_out_in, x), rtol=1e-5, atol=1e-6)


def test_adam_benchmark_swaps_the_optimizer_of_classifier_and_generator():
    import jax
    import jax.numpy as jnp
    import optax

    from benchmarks.adam_arithmetic import optax_adam
    from cljax import optim
    from cljax.config import RunConfig
    from cljax.engine import make_optimizer
    from cljax.models.generators import vae_generator

    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
    grads = {"w": jnp.linspace(0.3, -0.2, 12).reshape(3, 4) ** 3}

    def first_update(optimizer):
        return optimizer.update(grads, optimizer.init(params), params)[0]["w"]

    def generator_update(generator):
        state = generator.init(jax.random.key(0))
        g = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), state.params)
        return jax.tree.leaves(generator.apply_gradients(state, g).params)

    config = RunConfig(lr=0.01)
    with optax_adam():
        swapped = first_update(make_optimizer(config))
        swapped_vae = generator_update(vae_generator((28, 28, 1)))
    ours, our_vae = first_update(make_optimizer(config)), generator_update(vae_generator((28, 28, 1)))
    np.testing.assert_array_equal(swapped, first_update(optax.adam(0.01)))
    np.testing.assert_array_equal(ours, first_update(optim.adam(0.01)))
    assert not np.array_equal(swapped, ours)  # the two arithmetics round differently
    assert any(not np.array_equal(a, b) for a, b in zip(swapped_vae, our_vae, strict=True))


def _step_dots(tiny_data, strategy: str):
    from benchmarks.matmul_floor import step_dots
    from cljax.config import RunConfig
    from cljax.engine import prepare

    config = RunConfig(benchmark="split-mnist", scenario="class", strategy=strategy, seeds=1, iters=2)
    return step_dots(prepare(config, tiny_data))


def test_matmul_floor_finds_every_product_of_the_none_step(tiny_data):
    dots = _step_dots(tiny_data, "none")
    assert dots["first"] == dots["later"], "fine-tuning has no branch on the context"
    assert len(dots["later"]) == 8  # forward 3, weight gradients 3, input gradients of layers 2 and 3
    assert sum(d.flops for d in dots["later"]) == bench.mlp_step_flops(128, 10)
    first_layer = [d for d in dots["later"] if d.lhs == (128, 784) and d.rhs == (400, 784)]
    assert [d.dimension_numbers for d in first_layer] == [(((1,), (1,)), ((), ()))], (
        "x @ w.T is read with w in its stored (out, in) layout, as XLA compiles it"
    )


def test_matmul_floor_counts_dgr_with_and_without_replay(tiny_data):
    dots = _step_dots(tiny_data, "dgr")
    mlp = 784 * 400 + 400 * 400 + 400 * 10  # multiply-adds per sample, forward
    vae = 784 * 400 + 400 * 400 + 2 * 400 * 100 + 100 * 400 + 400 * 400 + 400 * 784
    decoder = 100 * 400 + 400 * 400 + 400 * 784
    no_input_grad = 784 * 400  # neither network needs the gradient of its input
    first = 128 * (3 * mlp - no_input_grad) + 128 * (3 * vae - no_input_grad)
    later = (
        256 * (3 * mlp - no_input_grad)  # classifier on 128 current + 128 replayed samples
        + 128 * mlp  # the frozen classifier labels the replay
        + 256 * (3 * vae - no_input_grad)  # the VAE on the same 256
        + 128 * decoder  # the frozen decoder generates the replay
    )
    assert sum(d.flops for d in dots["first"]) == 2 * first
    assert sum(d.flops for d in dots["later"]) == 2 * later


def test_dot_flops_count_batch_dimensions():
    from benchmarks.matmul_floor import Dot

    batched = Dot((5, 128, 400), (5, 10, 400), "float32", (((2,), (2,)), ((0,), (0,))))
    assert batched.flops == 2 * 5 * 128 * 10 * 400


def test_a_timed_product_computes_the_whole_product():
    from jax import lax

    from benchmarks.matmul_floor import Dot, dot_program

    dot = Dot((6, 5), (4, 5), "float32", (((1,), (1,)), ((), ())))
    program, (a, b) = dot_program(dot, length=3)
    _, c = program(a, b)
    np.testing.assert_allclose(c, lax.dot_general(a, b, dot.dimension_numbers), rtol=1e-6)


def test_a_step_comparison_times_each_strategy_and_writes_where_it_ran(tmp_path, monkeypatch, capsys):
    from benchmarks.context_program import compare

    out = tmp_path / "results" / "comparison.json"
    argv = ["comparison", "--strategies", "none,dgr", "--repeats", "3", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    calls = []

    def measure(strategy, iters, repeats, data_dir):
        calls.append((strategy, iters, repeats, data_dir))
        return {"ms_per_iter": iters / 1000}

    compare("a comparison", "comparison", 5, measure, lambda r: f"{r['ms_per_iter']:.1f} ms/iter")
    assert calls == [("none", 1000, 3, None), ("dgr", 300, 3, None)]  # none's steps are the fast ones
    record = json.loads(out.read_text())
    assert record["repeats"] == 3 and record["results"]["dgr"] == {"ms_per_iter": 0.3}
    assert record["environment"]["backend"] == "cpu"
    assert "dgr: 0.3 ms/iter (medians of 3)" in capsys.readouterr().out
