"""CIFAR-10 pre-training: cljax beside the reference's own ``main_pretrain.py``, same epochs and seed.

NMI-2022 publishes no accuracy for its pre-trained conv layers, so the reference itself is the yardstick:

    python benchmarks/reference_pretrain.py --reference CHECKOUT --data-dir DIR --epochs 3 --seed 2

``CHECKOUT`` is a checkout of GMvandeVen/continual-learning (``pip install -e '.[bench]'`` and its
requirements.txt: torch, torchvision, matplotlib, tqdm, scipy, scikit-learn); ``DIR`` holds
``cifar-10-batches-bin/`` (``python ../shared/data/prepare.py DIR cifar10``). The reference runs unchanged,
in this process, with the arguments of its ``all_results.sh`` (``--experiment=CIFAR10 --augment``, here with
``--epochs`` and ``--seed`` as given and ``--no-save``). Its torchvision loader wants CIFAR-10's Python
pickles, so the binary files are written in that layout to a temporary folder, and torchvision's MD5 check
of the official archive is switched off for them (the arrays are the same, the pickle bytes are not).
cljax then pre-trains with the same settings (``cljax.pretrain.pretrain``, into a temporary folder). Both
report the CIFAR-10 test accuracy of the final network (the reference's last line, cljax's record) and the
wall time; the result goes to ``benchmarks/results/reference_pretrain.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pickle
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BINARY_FILES = {f"data_batch_{i}": f"data_batch_{i}.bin" for i in range(1, 6)}
BINARY_FILES["test_batch"] = "test_batch.bin"
RECORD_BYTES = 1 + 32 * 32 * 3  # a label byte, then the image channel by channel (CIFAR-10's binary version)
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_python_layout(binary_dir: Path, out: Path) -> Path:
    """CIFAR-10's binary files as torchvision reads them (``cifar-10-batches-py``); returns ``out``."""
    folder = out / "CIFAR10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, binary in BINARY_FILES.items():
        path = binary_dir / binary
        if not path.is_file():
            raise SystemExit(f"missing {path}: write it with `python ../shared/data/prepare.py DIR cifar10`")
        records = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
        entry = {"data": records[:, 1:].copy(), "labels": records[:, 0].astype(int).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": LABEL_NAMES}))
    return out


def run_reference(checkout: Path, data: Path, epochs: int, seed: int) -> dict:
    """The reference's ``main_pretrain.run`` in this process; its printed test accuracy and the time."""
    from torchvision.datasets import cifar

    cifar.check_integrity = lambda *args, **kwargs: True  # rewritten pickles: same arrays, other bytes
    sys.path.insert(0, str(checkout))
    argv = ["--experiment=CIFAR10", f"--epochs={epochs}", "--augment", f"--seed={seed}", "--no-save"]
    sys.argv = ["main_pretrain.py", *argv, f"--data-dir={data}"]
    import main_pretrain  # the reference's module, from the checkout

    args = main_pretrain.handle_inputs()
    printed = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        main_pretrain.run(args, verbose=True)
    seconds = time.perf_counter() - started
    found = re.search(r"on testing set\):\s+([0-9.]+)", printed.getvalue())
    if found is None:
        raise SystemExit("the reference printed no test accuracy:\n" + printed.getvalue()[-2000:])
    return {"command": "main_pretrain.py " + " ".join(argv), "test_accuracy": 100 * float(found.group(1)),
            "wall_seconds": seconds}  # fmt: skip


def run_cljax(data_dir: Path, epochs: int, seed: int, out: Path) -> dict:
    """cljax's pre-training with the same settings; the record's test accuracy and the time."""
    from cljax.pretrain import pretrain

    started = time.perf_counter()
    record = pretrain(seed=seed, epochs=epochs, data_dir=data_dir, out=out / "set", log=None)
    return {"test_accuracy": record.test_accuracy, "wall_seconds": time.perf_counter() - started,
            "train_seconds": record.train_seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="the reference checkout")
    parser.add_argument("--data-dir", type=Path, required=True, help="the folder of cifar-10-batches-bin/")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "reference_pretrain.json")
    args = parser.parse_args()
    if not (args.reference / "main_pretrain.py").is_file():
        raise SystemExit(f"{args.reference} has no main_pretrain.py: pass a checkout of the reference")
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        data = write_python_layout(args.data_dir / "cifar-10-batches-bin", Path(tmp) / "torch")
        reference = run_reference(args.reference.resolve(), data, args.epochs, args.seed)
        print(f"reference: {reference['test_accuracy']:.2f} %, {reference['wall_seconds']:.0f} s", flush=True)
        ours = run_cljax(args.data_dir, args.epochs, args.seed, Path(tmp) / "cljax")
        print(f"cljax:     {ours['test_accuracy']:.2f} %, {ours['wall_seconds']:.0f} s", flush=True)
    from cljax.engine import environment

    env = environment()
    result = {
        "summary": f"CIFAR-10 test accuracy after {args.epochs} epochs (seed {args.seed}): reference "
        f"{reference['test_accuracy']:.2f} %, cljax {ours['test_accuracy']:.2f} %; wall time reference / "
        f"cljax {reference['wall_seconds'] / ours['wall_seconds']:.2f}x",
        "epochs": args.epochs,
        "seed": args.seed,
        "reference": reference,
        "cljax": ours,
        "machine": {
            "cpu": env["cpu_model"],
            "cpu_cores": env["cpu_cores"],
            "jax_device": env["device_kind"],
            "torch_device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "jax": env["jax"],
            "torch": torch.__version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(result["summary"])


if __name__ == "__main__":
    main()
