"""Fine-tuning, experience replay, learning without forgetting and deep generative replay in eager PyTorch.

Each strategy trains one classifier with Adam and keeps whatever the method needs (a memory of row
indices, a frozen copy of the classifier, a VAE and its frozen copy) as plain attributes. ``step(t)``
runs one iteration of context ``t`` (0-based) and returns the loss as a tensor, so nothing waits for the
device; ``end_context(t)`` runs after the context's last iteration. The heavy part of every step (the
forward passes and the losses) is one method, ``losses``, that ``torch.compile`` wraps in compiled mode;
drawing the batch, ``backward`` and the optimizer update stay eager in both modes.

Hyperparameters are the published split-MNIST ones (shared/PROTOCOL.md, NMI-2022): replay batch 128,
loss (1/t) L_current + (1 - 1/t) L_replay for the t-th context (1-based), 100 stored samples per class,
distillation at T = 2 without the T^2 factor, a VAE with its own Adam at lr 0.001.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import SplitMNIST
from .models import VAE, mlp


@dataclass(frozen=True)
class Hyper:
    """Training settings shared by every strategy."""

    batch_size: int = 128
    lr: float = 1e-3
    budget: int = 100  # ER: stored samples per class
    replay_batch: int = 128  # ER and DGR
    temperature: float = 2.0  # LwF
    z_dim: int = 100  # DGR
    compile: bool = False


def adam(params: Iterable[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam (0.9, 0.999): the fused kernel on CUDA, the multi-tensor (foreach) one elsewhere."""
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), **fast)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that is never trained (updated in place by :func:`copy_into`)."""
    import copy

    return copy.deepcopy(module).requires_grad_(False).eval()


@torch.no_grad()
def copy_into(target: nn.Module, source: nn.Module) -> None:
    """Overwrite ``target``'s parameters with ``source``'s, in place (compiled code that reads them stays
    valid)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.copy_(s)


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy between softened outputs (Hinton et al. 2015), as the reference's ``loss_fn_kd``.

    A teacher that covers only the student's first units (the reference's Class-IL with the classes seen
    so far active) gives the other units target probability 0, as the reference pads them.
    """
    log_student = F.log_softmax(student / temperature, dim=1)[:, : teacher.shape[1]]
    target = F.softmax(teacher / temperature, dim=1)
    return -(target * log_student).sum(dim=1).mean()


class Strategy:
    """Fine-tuning (``none``): cross-entropy on the current context's batch, the lower bound."""

    name = "none"

    def __init__(self, data: SplitMNIST, hp: Hyper, generator: torch.Generator):
        self.data, self.hp, self.generator = data, hp, generator
        self.model = mlp(data.n_out).to(data.device)
        self.optimizer = adam(self.model.parameters(), hp.lr, data.device)
        self.losses: Callable[..., torch.Tensor] = torch.compile(self._losses) if hp.compile else self._losses

    def _losses(self, x: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
        return F.cross_entropy(self.model(x)[:, self.data.units(t)], y)

    def update(self, loss: torch.Tensor) -> None:
        """Backward pass and one optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def step(self, t: int) -> torch.Tensor:
        x, y = self.data.batch(t, self.hp.batch_size, self.generator)
        loss = self.losses(x, y, t)
        self.update(loss)
        return loss.detach()

    def end_context(self, t: int) -> None:
        """Nothing to keep between contexts."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ExperienceReplay(Strategy):
    """ER: a class-balanced memory of ``budget`` random samples per class, a replay batch every step.

    Class- and Domain-IL draw the replay batch uniformly from the whole memory and train it on all units;
    Task-IL draws ceil(replay_batch / (t - 1)) samples from each earlier context, each trained on its own
    context's units, and averages those losses.
    """

    name = "er"

    def __init__(self, data: SplitMNIST, hp: Hyper, generator: torch.Generator):
        super().__init__(data, hp, generator)
        self.memory: list[torch.Tensor] = []  # per context: rows of data.train_x
        self.flat_memory = torch.empty(0, dtype=torch.long, device=data.device)
        self.replay_losses = torch.compile(self._replay_losses) if hp.compile else self._replay_losses

    def _replay_losses(
        self, x: torch.Tensor, y: torch.Tensor, x_replay: torch.Tensor, y_replay: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(torch.cat([x, x_replay]))
        current = F.cross_entropy(logits[: len(x), self.data.units(t)], y)
        replayed = logits[len(x) :]
        if self.data.scenario != "task":
            return current, F.cross_entropy(replayed, y_replay)
        per_context = replayed.split(math.ceil(self.hp.replay_batch / t))
        losses = [
            F.cross_entropy(z[:, self.data.units(k)], target)
            for k, (z, target) in enumerate(
                zip(per_context, y_replay.split(len(per_context[0])), strict=True)
            )
        ]
        return current, torch.stack(losses).mean()

    def draw_replay(self, t: int) -> torch.Tensor:
        """Rows of the replay batch."""
        g, device = self.generator, self.data.device
        if self.data.scenario != "task":
            pick = torch.randint(len(self.flat_memory), (self.hp.replay_batch,), device=device, generator=g)
            return self.flat_memory[pick]
        n = math.ceil(self.hp.replay_batch / t)
        return torch.cat(
            [rows[torch.randint(len(rows), (n,), device=device, generator=g)] for rows in self.memory[:t]]
        )

    def step(self, t: int) -> torch.Tensor:
        if t == 0:
            return super().step(t)
        x, y = self.data.batch(t, self.hp.batch_size, self.generator)
        rows = self.draw_replay(t)
        current, replayed = self.replay_losses(x, y, self.data.images(rows), self.data.train_y[rows], t)
        w = 1.0 / (t + 1)
        loss = w * current + (1.0 - w) * replayed
        self.update(loss)
        return loss.detach()

    def end_context(self, t: int) -> None:
        """Store ``budget`` randomly chosen samples of each class of context ``t``."""
        rows = self.data.train_rows[t]
        labels = self.data.train_y[rows]
        kept = []
        for label in torch.unique(labels):
            members = rows[labels == label]
            order = torch.randperm(len(members), device=self.data.device, generator=self.generator)
            kept.append(members[order[: self.hp.budget]])
        self.memory.append(torch.cat(kept))
        self.flat_memory = torch.cat(self.memory)


class LearningWithoutForgetting(Strategy):
    """LwF: distillation (T = 2) of a frozen copy of the previous classifier on the current inputs.

    Class-IL: L = L_cur + L_distill; Task- and Domain-IL: L = L_cur + (t - 1) mean(L_distill), one
    distillation per earlier context's units (NMI-2022). With every Class-IL unit active from the first
    context, teacher and student both cover all units, as in the reference code.
    """

    name = "lwf"

    def __init__(self, data: SplitMNIST, hp: Hyper, generator: torch.Generator):
        super().__init__(data, hp, generator)
        self.teacher = frozen_copy(self.model)

    def _losses(self, x: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
        logits = self.model(x)
        current = F.cross_entropy(logits[:, self.data.units(t)], y)
        if t == 0:
            return current
        with torch.no_grad():
            teacher = self.teacher(x)
        temp, data = self.hp.temperature, self.data
        if data.scenario == "class":
            return current + distillation(logits, teacher, temp)
        if data.scenario == "domain":
            return current + t * distillation(logits, teacher, temp)
        return current + sum(
            distillation(logits[:, data.units(k)], teacher[:, data.units(k)], temp) for k in range(t)
        )

    def end_context(self, t: int) -> None:
        copy_into(self.teacher, self.model)


class GenerativeReplay(Strategy):
    """DGR: replay from a frozen VAE, hard-labelled by a frozen classifier, the VAE trained alongside.

    From the second context on, each step decodes ``replay_batch`` samples from the previous VAE and
    labels them with the previous classifier's arg-max over the units active in the previous context (all
    of them in Class- and Domain-IL, as in the reference code; Task-IL: under every earlier context's
    units, losses averaged). Classifier and VAE are both trained with
    (1/t) L_current + (1 - 1/t) L_replay, each with its own Adam.
    """

    name = "dgr"

    def __init__(self, data: SplitMNIST, hp: Hyper, generator: torch.Generator):
        super().__init__(data, hp, generator)
        self.vae = VAE(z_dim=hp.z_dim).to(data.device)
        self.vae_optimizer = adam(self.vae.parameters(), hp.lr, data.device)
        self.prev_model, self.prev_vae = frozen_copy(self.model), frozen_copy(self.vae)
        self.replay_losses = torch.compile(self._replay_losses) if hp.compile else self._replay_losses

    def _losses(self, x: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
        return F.cross_entropy(self.model(x)[:, self.data.units(t)], y) + self.vae(x).mean()

    def _replay_losses(
        self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        data, n = self.data, len(x)
        with torch.no_grad():
            x_replay = torch.sigmoid(self.prev_vae.decoder(z))
            teacher = self.prev_model(x_replay)
        x_all = torch.cat([x, x_replay])
        logits = self.model(x_all)
        gen = self.vae(x_all)
        current = F.cross_entropy(logits[:n, data.units(t)], y) + gen[:n].mean()
        replayed = logits[n:]
        if data.scenario != "task":
            return current, F.cross_entropy(replayed, teacher.argmax(dim=1)) + gen[n:].mean()
        heads = [data.units(k) for k in range(t)]
        losses = [F.cross_entropy(replayed[:, u], teacher[:, u].argmax(dim=1)) for u in heads]
        return current, torch.stack(losses).mean() + gen[n:].mean()

    def update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the classifier's and the VAE's losses touch disjoint parameters
        self.optimizer.step()
        self.vae_optimizer.step()

    def step(self, t: int) -> torch.Tensor:
        if t == 0:
            return super().step(t)
        x, y = self.data.batch(t, self.hp.batch_size, self.generator)
        z = torch.randn(
            self.hp.replay_batch, self.hp.z_dim, device=self.data.device, generator=self.generator
        )
        current, replayed = self.replay_losses(x, y, z, t)
        w = 1.0 / (t + 1)
        loss = w * current + (1.0 - w) * replayed
        self.update(loss)
        return loss.detach()

    def end_context(self, t: int) -> None:
        copy_into(self.prev_model, self.model)
        copy_into(self.prev_vae, self.vae)


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Strategy, ExperienceReplay, LearningWithoutForgetting, GenerativeReplay)
}
