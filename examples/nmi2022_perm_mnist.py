"""Rebuild the nmi2022-perm-mnist table: every method and scenario beside the published values.

    python examples/nmi2022_perm_mnist.py                       # the paper's seeds, full length
    python examples/nmi2022_perm_mnist.py --seeds 5 --data-dir ../shared/data

Finished cells are kept in examples/results/nmi2022_perm_mnist/runs/,
so an interrupted table continues where it stopped. Writes table.md, table.csv, table.json,
final_accuracy.png and average_accuracy.png there.
"""

import sys
from pathlib import Path

from cljax.cli import main

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "results" / "nmi2022_perm_mnist"
    sys.exit(main(["table", "nmi2022-perm-mnist", "--out-dir", str(out), *sys.argv[1:]]))
