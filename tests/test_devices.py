"""Seeds spread over host devices: how many devices, and that each seed trains as it would alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cljax.devices import devices_for_seeds, seed_sharding, use_host_devices

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("seeds", "cores", "devices"),
    [(1, 2, 1), (2, 2, 2), (4, 2, 2), (20, 2, 2), (5, 2, 5), (9, 2, 3), (3, 4, 3), (6, 4, 6), (12, 4, 4)],
)
def test_devices_for_seeds_divides_the_seeds_evenly_over_at_least_the_cores(seeds, cores, devices):
    assert devices_for_seeds(seeds, cores) == devices
    assert seeds % devices == 0


def test_a_started_jax_keeps_its_one_device():
    assert use_host_devices(4) == 1, "the tests' JAX has started with one CPU device"
    assert seed_sharding(4) is None


SPREAD_RUN = """
import json, sys
import cljax
from tests.conftest import synthetic_dataset

data = synthetic_dataset()
common = dict(benchmark="split-mnist", scenario="class", strategy="none", iters=40, batch_size=16, quiet=True)
together = cljax.run(seeds=2, dataset=data, **common)
alone = [cljax.run(seeds=1, first_seed=s, dataset=data, **common) for s in together.seeds]
print(json.dumps({
    "devices": together.environment["device_count"],
    "seed_devices": together.environment["seed_devices"],
    "together": together.acc_matrix,
    "alone": [r.acc_matrix[0] for r in alone],
    "together_loss": together.context_loss,
    "alone_loss": [r.context_loss[0] for r in alone],
}))
"""


def test_seeds_spread_over_two_devices_train_each_as_it_would_alone():
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "CLJAX_COMPILE_CACHE": "off"}
    out = subprocess.run(
        [sys.executable, "-c", SPREAD_RUN], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2 and result["seed_devices"] == 2
    # one seed per device: each trains as a run of that seed alone does, to float rounding
    np.testing.assert_allclose(result["together_loss"], result["alone_loss"], rtol=1e-5)
    np.testing.assert_allclose(result["together"], result["alone"], atol=1.0)
