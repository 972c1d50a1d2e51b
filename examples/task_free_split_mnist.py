"""Rebuild the task-free-split-mnist table: the reference's compare_task_free.py on split MNIST.

    python examples/task_free_split_mnist.py --seeds 5 --data-dir ../shared/data
    python examples/task_free_split_mnist.py --seeds 2 --iters 100 --fuzziness 25   # a quick look

No context boundaries are given to the learner: a fuzzy-boundaries stream (cljax.task_free). Finished
cells are kept in examples/results/task_free_split_mnist/runs/, so an interrupted table continues where
it stopped. Writes table.md, table.csv, table.json, final_accuracy.png and average_accuracy.png there.
"""

import sys
from pathlib import Path

from cljax.cli import main

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "results" / "task_free_split_mnist"
    sys.exit(main(["table", "task-free-split-mnist", "--out-dir", str(out), *sys.argv[1:]]))
