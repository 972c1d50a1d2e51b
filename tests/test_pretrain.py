"""Pre-training the CIFAR conv layers: augmentation, the saved set and its record, finding it again."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.data.dataset import Dataset
from cljax.pretrain import augment, load_pretrained, pretrain, pretrain_seeds, tree_sha256


def tiny_cifar(n_per_class: int = 16, seed: int = 0) -> Dataset:
    """32x32 RGB images whose class sets the mean of one colour channel in one image quadrant."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per_class).astype(np.int32)
    x = rng.integers(0, 80, (len(y), 32, 32, 3))
    for c in range(4):
        r, col = divmod(c, 2)
        x[y == c, 16 * r : 16 * r + 16, 16 * col : 16 * col + 16, c % 3] += 150
    x = x.astype(np.uint8)
    return Dataset("cifar10", x, y, x, y, 4)


def test_augmentation_is_a_crop_of_the_symmetrically_padded_image_maybe_mirrored():
    x = jax.random.randint(jax.random.key(0), (6, 8, 8, 2), 0, 255).astype(jnp.float32)
    out = np.asarray(augment(x, jax.random.key(1), padding=2))
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="symmetric")
    for img, src in zip(out, padded, strict=True):
        windows = [src[r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(np.array_equal(img, w) or np.array_equal(img, w[:, ::-1]) for w in windows)
    assert np.array_equal(np.asarray(augment(x, jax.random.key(1), padding=0))[:, :, ::-1].shape, x.shape)


def test_a_pretrained_set_is_saved_with_its_record_and_found_again(tmp_path, monkeypatch):
    import cljax.pretrain

    entered = []  # every program runs under fast_convolutions (25x faster conv gradients in the scan on CPU)
    real = cljax.pretrain.fast_convolutions

    def counted():
        entered.append(1)
        return real()

    monkeypatch.setattr(cljax.pretrain, "fast_convolutions", counted)
    folder = tmp_path / "set"
    logs: list[str] = []
    record = pretrain(seed=3, epochs=2, batch_size=16, lr=1e-3, out=folder, dataset=tiny_cifar(),
                      log=logs.append)  # fmt: skip
    assert len(logs) == 3 and logs[0].startswith("epoch 1/2")
    assert len(entered) >= 4  # init, two epochs, accuracy
    saved = json.loads((folder / "record.json").read_text())
    assert saved["seed"] == 3 and saved["epochs"] == 2 and saved["sha256"] == record.sha256
    assert saved["test_accuracy"] > 25  # 4 classes; it learns something in 8 steps
    conv, found = load_pretrained(3, 2, folder=folder)
    assert found == saved and tree_sha256(conv) == record.sha256
    assert set(conv) == {"params", "batch_stats"} and len(conv["batch_stats"]) == 5  # 5 batch norms
    with pytest.raises(FileExistsError, match="--overwrite"):
        pretrain(seed=3, epochs=1, batch_size=16, out=folder, dataset=tiny_cifar(), log=None)
    assert json.loads((folder / "record.json").read_text()) == saved  # nothing overwritten

    found["sha256"] = "0" * 64
    (folder / "record.json").write_text(json.dumps(found))
    with pytest.raises(ValueError, match="do not match the hash"):
        load_pretrained(3, 2, folder=folder)


def test_a_missing_set_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="cljax pretrain --benchmark cifar10 --seed 7 --epochs 100"):
        load_pretrained(7, folder=tmp_path / "nothing")


@pytest.mark.parametrize(("changes", "message"), [({"epochs": 0}, "epochs"), ({"lr": float("nan")}, "lr")])
def test_bad_settings_are_refused(changes, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        pretrain(**{"out": tmp_path, "dataset": tiny_cifar(), "log": None, **changes})


def test_the_command_line_refuses_to_overwrite_a_set(tmp_path, capsys):
    from cljax.cli import main

    (tmp_path / "record.json").write_text("{}")
    assert main(["pretrain", "--seed", "2", "--out", str(tmp_path), "--quiet"]) == 1
    assert "already holds a pre-trained set" in capsys.readouterr().err


class Interrupted(Exception):
    pass


def test_an_interrupted_pretraining_continues_to_the_same_set(tmp_path):
    settings = dict(seed=4, epochs=3, batch_size=16, lr=1e-3, dataset=tiny_cifar(), checkpoint_every=1)
    whole = pretrain(**settings, out=tmp_path / "whole", log=None)

    def stop_in_epoch_3(line: str) -> None:
        if line.startswith("epoch 3/3"):
            raise Interrupted

    folder = tmp_path / "set"
    with pytest.raises(Interrupted):
        pretrain(**settings, out=folder, log=stop_in_epoch_3)
    assert (tmp_path / "set.training").is_dir() and not folder.exists()
    with pytest.raises(ValueError, match="interrupted pre-training with other settings"):
        pretrain(**{**settings, "lr": 1e-2}, out=folder, log=None)

    logs: list[str] = []
    resumed = pretrain(**settings, out=folder, log=logs.append)
    assert logs[0].startswith("continuing from epoch 2") and logs[1].startswith("epoch 3/3")
    assert resumed.sha256 == whole.sha256 and resumed.test_accuracy == whole.test_accuracy
    assert not (tmp_path / "set.training").exists()  # the checkpoints go once the set is written


def test_several_seeds_train_in_one_program_as_each_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CLJAX_CACHE_DIR", str(tmp_path))
    settings = dict(epochs=2, batch_size=16, lr=1e-3, dataset=tiny_cifar(), log=None)
    together = pretrain_seeds([5, 6], **settings)
    alone = pretrain(seed=6, out=tmp_path / "alone", **settings)
    assert [r.seed for r in together] == [5, 6] and together[1].seeds_trained_together == 2
    mapped, _ = load_pretrained(6, 2)
    solo, _ = load_pretrained(6, 2, folder=tmp_path / "alone")
    other, _ = load_pretrained(5, 2)
    # Adam turns rounding differences of near-zero gradients into steps of up to lr each way: the two stay
    # within 2 lr per step of each other, while another seed's network is nowhere near
    gap = lambda a, b: max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))  # noqa: E731
    steps = settings["epochs"] * (64 // settings["batch_size"])
    assert gap(mapped, solo) < 2 * steps * settings["lr"] < 0.05 < gap(mapped, other)
    assert abs(together[1].test_accuracy - alone.test_accuracy) <= 100 / 64  # at most one of 64 images
    assert together[0].sha256 != together[1].sha256  # each seed its own network
    assert not list(tmp_path.glob("pretrained/*.training"))
    with pytest.raises(FileExistsError, match="s5, .*s6 already hold a pre-trained set"):
        pretrain_seeds([5, 6], **settings)


def test_the_command_line_reads_seed_lists(tmp_path, capsys):
    from cljax.cli import main, seed_list

    assert seed_list("2-4,7") == [2, 3, 4, 7]
    assert main(["pretrain", "--seeds", "2,x", "--quiet"]) == 1
    assert "expected seeds like 2,3,4 or 2-11" in capsys.readouterr().err
    assert main(["pretrain", "--seeds", "2,3", "--out", str(tmp_path), "--quiet"]) == 1
    assert "with --seeds each set goes to the cache" in capsys.readouterr().err
