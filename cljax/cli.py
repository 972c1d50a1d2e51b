"""The command line: ``cljax run`` trains and evaluates, ``cljax list`` names what is available.

A user's strategies, models and benchmarks join with ``--import MODULE`` (a module that registers them
when imported) or from an installed package's entry points in the ``cljax.plugins`` group.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cljax.config import ConfigError, RunConfig, validate
from cljax.distributed import add_flags as add_distributed_flags
from cljax.distributed import is_writer, join_from
from cljax.presets import BENCHMARKS, SCENARIO_NAMES, SCENARIOS

# The main job compares fine-tuning with the strongest method cljax has, in this order of preference.
MAIN_JOB_PREFERENCE = ("bir", "dgr-distill", "dgr", "icarl", "er", "joint")


def main_job_strategies() -> list[str]:
    from cljax.strategies import REGISTRY

    best = next(name for name in MAIN_JOB_PREFERENCE if name in REGISTRY)
    return ["none", best]


# Flags for the hyperparameters the field names; each sets the strategy option of the same name.
HYPERPARAMETER_FLAGS = (
    ("budget", int, "stored samples per class (episodic memory; NMI-2022: 100)"),
    ("total-budget", int, "stored samples in all (3S-2019 protocol; e.g. 2000 for iCaRL)"),
    ("lambda", float, "regularisation strength (EWC, online EWC)"),
    ("c", float, "SI regularisation strength"),
    ("gamma", float, "online EWC's decay of the running Fisher"),
    ("temperature", float, "distillation temperature"),
    ("fisher-n", int, "samples for the Fisher information (default: all of the context)"),
    ("generator", str, "generative replay's generator: vae or gan"),
)


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"options: expected KEY=VALUE, got {text!r} (for example --option temperature=2)")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip().replace("-", "_"), value


PLUGIN_GROUP = "cljax.plugins"


def _add_import_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module that registers strategies, models or benchmarks (repeatable; a file path works "
        "too)",
    )


def import_plugins(modules: Sequence[str]) -> None:
    """Import the installed ``cljax.plugins`` entry points, then each ``--import`` module (or .py path)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=PLUGIN_GROUP):
        entry.load()
    for name in modules:
        if name.endswith(".py") or os.sep in name:
            path = Path(name)
            if not path.is_file():
                raise ConfigError(f"import: no such file {name}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                sys.modules.pop(path.stem, None)
                raise
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                raise ConfigError(
                    f"import: no module named {name!r}; check the name, or run from the folder that holds it "
                    "(or give its .py path)"
                ) from None
            raise


def _add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="compile every program afresh instead of reusing compiled programs kept on disk "
        "(also: CLJAX_COMPILE_CACHE=off; CLJAX_COMPILE_CACHE=DIR moves the cache)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cljax", description="Continual learning in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a strategy on a benchmark and report the accuracy matrix")
    run.add_argument("--benchmark", default="split-mnist", help=f"one of: {', '.join(BENCHMARKS)}")
    run.add_argument("--scenario", default="class", help="task, domain or class (incremental learning)")
    run.add_argument(
        "--strategy",
        default=None,
        help="a strategy name, or several separated by commas (default: none and the best method)",
    )
    run.add_argument("--seeds", type=int, default=1, help="number of seeds, run side by side in one program")
    run.add_argument(
        "--first-seed", type=int, default=0, help="seeds are FIRST..FIRST+N-1 (0: natural class order)"
    )
    run.add_argument(
        "--iters", type=int, default=None, help="iterations per context (default: the protocol's)"
    )
    run.add_argument("--batch-size", type=int, default=None)
    run.add_argument("--lr", type=float, default=None)
    run.add_argument("--model", default=None, help="a registered classifier (default: the benchmark's)")
    run.add_argument(
        "--class-il-active",
        default="all",
        help="Class-IL output units: all (NMI-2022) or seen (classes seen so far, 3S-2019)",
    )
    for flag, kind, text in HYPERPARAMETER_FLAGS:
        run.add_argument(f"--{flag}", type=kind, default=None, help=text)
    _add_stream_flags(run)
    run.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a strategy hyperparameter; repeat for several",
    )
    run.add_argument("--data-dir", default=None, help="folder with one subfolder per dataset")
    run.add_argument("--no-download", action="store_true", help="never download data")
    run.add_argument("--out", default=None, help="write the results as JSON to this file")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    run.add_argument(
        "--save-samples",
        default=None,
        metavar="DIR",
        help="write a PNG grid of replayed samples after each context (generative replay)",
    )
    run.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="save the whole state after every context (orbax); see --resume",
    )
    run.add_argument("--resume", action="store_true", help="continue the run in --checkpoint-dir")
    run.add_argument(
        "--log-dir",
        default=None,
        metavar="DIR",
        help="per-context metrics as CSV (and TensorBoard events if tensorboardX is installed)",
    )
    run.add_argument("--quiet", action="store_true", help="print only the summary")
    _add_compile_cache_flag(run)
    add_distributed_flags(run)
    _add_import_flag(run)
    listing = sub.add_parser("list", help="name the benchmarks, scenarios, strategies and models")
    _add_import_flag(listing)
    table = sub.add_parser(
        "table",
        help="rebuild a published table (runs only the cells not yet in --out-dir; an interrupted cell "
        "continues from its last context)",
    )
    table.add_argument(
        "name",
        help="nmi2022-split-mnist, 3s2019-split-mnist, nmi2022-perm-mnist, nmi2022-split-cifar100 or "
        "task-free-split-mnist",
    )
    table.add_argument(
        "--out-dir", required=True, help="folder for the runs, table.md/.csv/.json and figures"
    )
    table.add_argument("--seeds", type=int, default=None, help="default: the paper's (20 for split MNIST)")
    table.add_argument("--first-seed", type=int, default=None, help="default: the paper's (2)")
    table.add_argument(
        "--iters", type=int, default=None, help="iterations per context (default: the protocol's)"
    )
    table.add_argument(
        "--fuzziness",
        type=int,
        default=None,
        metavar="N",
        help="task-free tables: the fuzzy boundaries' width (default 500; a short look: --iters 100 "
        "--fuzziness 25)",
    )
    table.add_argument(
        "--methods", default=None, help="strategies to run, separated by commas (default: all)"
    )
    table.add_argument(
        "--scenarios", default=None, help="scenarios to run, separated by commas (default: all)"
    )
    table.add_argument("--data-dir", default=None)
    table.add_argument("--quiet", action="store_true")
    _add_compile_cache_flag(table)
    _add_import_flag(table)
    sweep = sub.add_parser(
        "sweep", help="run a grid of hyperparameter values x seeds, as one compiled program per shape"
    )
    sweep.add_argument("--benchmark", default="split-mnist", help=f"one of: {', '.join(BENCHMARKS)}")
    sweep.add_argument("--scenario", default="class", help="task, domain or class")
    sweep.add_argument("--strategy", required=True, help="the strategy whose hyperparameters are swept")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="KEY=V1,V2,...",
        help="values of a hyperparameter (a strategy option, lr, batch_size or iters); repeat for a grid",
    )
    sweep.add_argument("--seeds", type=int, default=1, help="seeds per configuration")
    sweep.add_argument("--first-seed", type=int, default=0)
    sweep.add_argument("--iters", type=int, default=None, help="iterations per context (default: protocol's)")
    sweep.add_argument("--batch-size", type=int, default=None)
    sweep.add_argument("--model", default=None)
    sweep.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a fixed strategy hyperparameter"
    )
    sweep.add_argument("--data-dir", default=None)
    sweep.add_argument("--no-download", action="store_true")
    sweep.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="sweep.json, sweep.md, sweep.png and checkpoints (to continue)",
    )
    sweep.add_argument("--quiet", action="store_true")
    _add_compile_cache_flag(sweep)
    add_distributed_flags(sweep)
    _add_import_flag(sweep)
    pre = sub.add_parser(
        "pretrain",
        help="pre-train the CIFAR conv layers on CIFAR-10, as NMI-2022 (the reference's main_pretrain.py)",
    )
    pre.add_argument("--benchmark", default="cifar10", choices=("cifar10",), help="the data to pre-train on")
    pre.add_argument("--seed", type=int, default=1, help="one set per seed (the reference's --seed-to-stag)")
    pre.add_argument(
        "--seeds",
        default=None,
        help="several sets in one program, e.g. 2,3,4 or 2-11 (a GPU trains them at almost the cost of one)",
    )
    pre.add_argument("--epochs", type=int, default=100, help="the reference: 100")
    pre.add_argument("--batch-size", type=int, default=256)
    pre.add_argument("--lr", type=float, default=1e-4)
    pre.add_argument("--no-augment", action="store_true", help="no random crops and flips")
    pre.add_argument("--data-dir", default=None)
    pre.add_argument("--out", default=None, help="folder to write (default: the cache's pretrained/ folder)")
    pre.add_argument("--overwrite", action="store_true", help="replace an existing set")
    pre.add_argument(
        "--checkpoint-every",
        type=int,
        default=5,
        help="epochs between checkpoints (<out>.training): an interrupted pre-training continues there",
    )
    pre.add_argument("--quiet", action="store_true")
    _add_compile_cache_flag(pre)
    plot = sub.add_parser("plot", help="draw accuracy matrices and average accuracy from result files")
    plot.add_argument("results", nargs="+", help="JSON files written by cljax run --out")
    plot.add_argument("--out", default="accuracy.png", help="the PNG file to write")
    plot.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return parser


def _add_stream_flags(parser: argparse.ArgumentParser) -> None:
    """Task-free learning (cljax.task_free): a label stream in place of announced contexts."""
    from cljax.label_streams import DEFAULT_FUZZINESS, LABEL_STREAMS

    parser.add_argument(
        "--stream",
        default=None,
        choices=LABEL_STREAMS,
        help="learn from a task-free stream with no context boundaries given (default: context by context)",
    )
    parser.add_argument(
        "--fuzziness",
        type=int,
        default=DEFAULT_FUZZINESS,
        metavar="N",
        help=f"fuzzy-boundaries: iterations over which each boundary fades (default {DEFAULT_FUZZINESS})",
    )
    parser.add_argument(
        "--update-every",
        type=int,
        default=None,
        metavar="N",
        help="iterations between consolidations on a stream (default: the strategy's, 100; replay: 1)",
    )
    parser.add_argument(
        "--labels-per-batch",
        action="store_true",
        help="one context per batch instead of one per sample",
    )


def _configs(args: argparse.Namespace) -> list[RunConfig]:
    names = args.strategy.split(",") if args.strategy else main_job_strategies()
    options = {
        flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag, _, _ in HYPERPARAMETER_FLAGS
    }
    options = {key: value for key, value in options.items() if value is not None}
    options.update(_parse_option(o) for o in args.option)
    configs = []
    for name in names:
        config = RunConfig(
            benchmark=args.benchmark,
            scenario=args.scenario,
            strategy=name.strip(),
            seeds=args.seeds,
            first_seed=args.first_seed,
            iters=args.iters,
            batch_size=args.batch_size,
            lr=args.lr,
            model=args.model,
            class_il_active=args.class_il_active,
            data_dir=args.data_dir,
            download=not args.no_download,
            options=options,
            stream=args.stream,
            fuzziness=args.fuzziness,
            update_every=args.update_every,
            labels_per_batch=args.labels_per_batch,
        )
        validate(config)
        configs.append(config)
    return configs


def _check_output(path: str | None, overwrite: bool) -> None:
    if path is None:
        return
    out = Path(path)
    if out.exists() and not overwrite:
        raise ConfigError(f"out: {out} exists; pass --overwrite to replace it or choose another file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"out: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"out: the folder {parent} is not writable")


def _compile_cache(args: argparse.Namespace) -> None:
    """Reuse compiled programs across runs unless ``--no-compile-cache``; called before any compilation."""
    if not args.no_compile_cache:
        from cljax.compilation import enable_compilation_cache

        enable_compilation_cache()


def _seed_devices(n_runs: int) -> None:
    """Spread the runs over host devices (cljax.devices); called before JAX runs anything."""
    from cljax.devices import use_host_devices

    use_host_devices(n_runs)


def cmd_run(args: argparse.Namespace) -> int:
    from cljax.engine import run
    from cljax.results import write_json

    configs = _configs(args)
    _check_output(args.out, args.overwrite)
    join_from(args)  # several processes as one run (cljax.distributed), before JAX runs anything
    _compile_cache(args)
    _seed_devices(max(len(c.seed_list) for c in configs))
    results = []
    for config in configs:
        checkpoint_dir = args.checkpoint_dir
        if checkpoint_dir is not None and len(configs) > 1:
            checkpoint_dir = str(Path(checkpoint_dir) / config.strategy)
        result = run(
            config,
            quiet=args.quiet,
            save_samples=args.save_samples,
            checkpoint_dir=checkpoint_dir,
            resume=args.resume,
            log_dir=args.log_dir,
        )
        print(result.summary(), flush=True)
        print(flush=True)
        results.append(result)
    if len(results) > 1:
        print("final average accuracy (%):")
        for r in results:
            print(f"  {r.strategy:<14} {r.mean:6.2f} +- {r.sem:.2f}   ({r.train_seconds:.1f} s training)")
    if args.out and is_writer():
        payload = results[0].to_dict() if len(results) == 1 else {"runs": [r.to_dict() for r in results]}
        write_json(args.out, payload)
        print(f"wrote {args.out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from cljax.strategies import REGISTRY

    print("benchmarks:")
    for b in BENCHMARKS.values():
        print(f"  {b.name:<16} {b.n_contexts} contexts x {b.classes_per_context} classes; {b.source}")
    print("scenarios:")
    for s in SCENARIOS:
        print(f"  {s:<16} {SCENARIO_NAMES[s]}")
    print("strategies:")
    for spec in REGISTRY.values():
        where = "" if spec.scenarios == SCENARIOS else f" [{', '.join(spec.scenarios)} only]"
        streams = " [also task-free: --stream]" if spec.task_free else ""
        print(f"  {spec.name:<16} {spec.summary}{where}{streams}")
    from cljax.models import MODELS

    print("models:")
    for name in MODELS:
        print(f"  {name}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from cljax.tables import TABLES, run_table

    if args.name not in TABLES:
        raise ConfigError(f"table: unknown table {args.name!r}; choose one of: {', '.join(TABLES)}")
    _compile_cache(args)
    _seed_devices(args.seeds or TABLES[args.name].seeds)
    split = lambda text: [t.strip() for t in text.split(",")] if text else None  # noqa: E731
    summary = run_table(
        TABLES[args.name],
        args.out_dir,
        seeds=args.seeds,
        first_seed=args.first_seed,
        iters=args.iters,
        methods=split(args.methods),
        scenarios=split(args.scenarios),
        data_dir=args.data_dir,
        quiet=args.quiet,
        fuzziness=args.fuzziness,
    )
    print((Path(args.out_dir) / "table.md").read_text())
    print(f"{len(summary['cells'])} cells in {args.out_dir}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from cljax.sweep import check_grid, parse_grid, sweep

    config = RunConfig(
        benchmark=args.benchmark,
        scenario=args.scenario,
        strategy=args.strategy,
        seeds=args.seeds,
        first_seed=args.first_seed,
        iters=args.iters,
        batch_size=args.batch_size,
        model=args.model,
        data_dir=args.data_dir,
        download=not args.no_download,
        options=dict(_parse_option(o) for o in args.option),
    )
    validate(config)
    grid = check_grid(config, parse_grid(args.grid))
    if args.out is not None and Path(args.out).is_file():
        raise ConfigError(f"out: {args.out} is a file; --out names a folder")
    join_from(args)  # several processes as one sweep (cljax.distributed), before JAX runs anything
    _compile_cache(args)
    n_configs = 1
    for values in grid.values():
        n_configs *= len(values)
    _seed_devices(n_configs * args.seeds)
    result = sweep(config, grid, out=args.out, quiet=args.quiet)
    print(result.markdown())
    if args.out is not None and is_writer():
        from cljax.sweep import SWEEP_FILES

        print(f"wrote {', '.join(str(Path(args.out) / name) for name in SWEEP_FILES)}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from cljax.pretrain import pretrain, pretrain_seeds

    _compile_cache(args)
    settings = dict(
        epochs=args.epochs,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        lr=args.lr,
        augment_data=not args.no_augment,
        overwrite=args.overwrite,
        log=(lambda line: None) if args.quiet else print,
        checkpoint_every=args.checkpoint_every,
    )
    if args.seeds is None:
        pretrain(seed=args.seed, out=args.out, **settings)
        return 0
    if args.out is not None:
        raise ValueError("pretrain: --out names one set's folder; with --seeds each set goes to the cache")
    pretrain_seeds(seed_list(args.seeds), **settings)
    return 0


def seed_list(text: str) -> list[int]:
    """``2,3,4`` or ``2-11`` (inclusive) or a mix, as a list of seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            seeds += list(range(int(first), int(last) + 1)) if last else [int(first)]
    except ValueError:
        raise ValueError(f"--seeds: expected seeds like 2,3,4 or 2-11, got {text!r}") from None
    return seeds


def cmd_plot(args: argparse.Namespace) -> int:
    from cljax.plots import matplotlib_missing, plot_runs

    _check_output(args.out, args.overwrite)
    missing = matplotlib_missing("plot")
    if missing:
        raise ConfigError(missing)
    print(f"wrote {plot_runs(args.results, args.out)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import_plugins(getattr(args, "imports", []))
        commands = {
            "run": cmd_run,
            "list": cmd_list,
            "table": cmd_table,
            "sweep": cmd_sweep,
            "plot": cmd_plot,
            "pretrain": cmd_pretrain,
        }
        return commands[args.command](args)
    except ConfigError as err:
        print(f"cljax: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, FloatingPointError) as err:
        print(f"cljax: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
