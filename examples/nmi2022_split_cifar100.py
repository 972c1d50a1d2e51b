"""Rebuild the nmi2022-split-cifar100 table: every method cljax runs there beside the published values.

    cljax pretrain --benchmark cifar10 --seed S --data-dir ../shared/data   # once per seed (2..11)
    python examples/nmi2022_split_cifar100.py --seeds 2 --scenarios class --data-dir DIR

The conv layers are pre-trained on CIFAR-10 per seed and frozen (cljax.pretrain, cljax.features); a seed
without its set stops with the command that makes it. Finished cells are kept in
examples/results/nmi2022_split_cifar100/runs/, so an interrupted table continues where it stopped.
"""

import sys
from pathlib import Path

from cljax.cli import main

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "results" / "nmi2022_split_cifar100"
    sys.exit(main(["table", "nmi2022-split-cifar100", "--out-dir", str(out), *sys.argv[1:]]))
