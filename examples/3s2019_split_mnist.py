"""Rebuild the 3s2019-split-mnist table: every method and scenario beside the published values.

    python examples/3s2019_split_mnist.py                       # the paper's seeds, full length
    python examples/3s2019_split_mnist.py --seeds 5 --data-dir ../shared/data

Finished cells are kept in examples/results/3s2019_split_mnist/runs/,
so an interrupted table continues where it stopped. Writes table.md, table.csv, table.json,
final_accuracy.png and average_accuracy.png there.
"""

import sys
from pathlib import Path

from cljax.cli import main

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "results" / "3s2019_split_mnist"
    sys.exit(main(["table", "3s2019-split-mnist", "--out-dir", str(out), *sys.argv[1:]]))
