"""MTMed3D's task balancing: one training loss from the per-task losses (fixed, uncertainty, GradNorm)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TaskBalancer(nn.Module):
    """Combines per-task losses ``{task: L_t}`` into one training loss.

    * ``fixed``: ``sum w_t L_t``.
    * ``uncertainty``: ``sum exp(-s_t) L_t + s_t``, ``s_t`` learned (log task variance, starts at
      ``-log w_t``).
    * ``gradnorm``: weights ``w_t`` (parameters, renormalised to sum to the number of tasks before every
      step) multiply the task losses with the weights detached; the added GradNorm loss
      ``sum_t |w_t ||grad_W L_t|| - mean_t(G) * r_t ** alpha|`` (targets detached, ``r_t`` the relative
      inverse training rate ``(L_t / L_t(0)) / mean``) depends on the weights alone, so one backward pass
      trains the network on the weighted sum and the weights on the GradNorm loss. ``W`` = the shared
      parameters passed to :meth:`combine`.

    Returns ``(weighted terms per task, balancing term, current weights)``.
    """

    def __init__(self, tasks: tuple[str, ...], scheme: str, weights: tuple[float, ...], alpha: float):
        super().__init__()
        self.tasks, self.scheme, self.alpha = tasks, scheme, alpha
        initial = torch.tensor(weights, dtype=torch.float32)
        if scheme == "fixed":
            self.register_buffer("fixed_weight", initial)
        elif scheme == "uncertainty":
            self.log_variance = nn.Parameter(-initial.log())
        else:
            self.task_weight = nn.Parameter(initial * len(tasks) / initial.sum())
            self.register_buffer("initial_loss", torch.full((len(tasks),), float("nan")))

    def weights(self) -> Tensor:
        """Current multipliers of the task losses, ``[T]`` (detached)."""
        if self.scheme == "fixed":
            return self.fixed_weight
        if self.scheme == "uncertainty":
            return torch.exp(-self.log_variance.detach())
        return self.task_weight.detach()

    def combine(
        self, losses: dict[str, Tensor], shared: list[nn.Parameter]
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        values = torch.stack([losses[t] for t in self.tasks])
        if self.scheme == "fixed":
            weighted = self.fixed_weight.to(values) * values
            return self._split(weighted), values.new_zeros(()), self.weights()
        if self.scheme == "uncertainty":
            s = self.log_variance.to(values)
            weighted = torch.exp(-s) * values
            return self._split(weighted), s.sum(), self.weights()
        return self._gradnorm(values, shared)

    def _gradnorm(
        self, values: Tensor, shared: list[nn.Parameter]
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        with torch.no_grad():  # GradNorm's renormalisation: weights stay positive and sum to T
            self.task_weight.clamp_(min=1e-3)
            self.task_weight.mul_(len(self.tasks) / self.task_weight.sum())
        weight = self.task_weight.to(values)
        weighted = weight.detach() * values
        if not torch.is_grad_enabled() or not values.requires_grad:
            return self._split(weighted), values.new_zeros(()), self.weights()
        norms = []
        for value in values:
            grads = torch.autograd.grad(value, shared, retain_graph=True, allow_unused=True)
            norms.append(torch.sqrt(sum((g.detach() ** 2).sum() for g in grads if g is not None) + 1e-12))
        grad_norms = weight * torch.stack(norms)  # depends on the weights only
        with torch.no_grad():
            if torch.isnan(self.initial_loss).any():
                self.initial_loss.copy_(values.detach().float())
            ratio = values.detach() / self.initial_loss.to(values).clamp_min(1e-12)
            inverse_rate = ratio / ratio.mean()
            target = grad_norms.mean() * inverse_rate**self.alpha
        balance = (grad_norms - target).abs().sum()
        return self._split(weighted), balance, self.weights()

    def _split(self, weighted: Tensor) -> dict[str, Tensor]:
        return {t: weighted[i] for i, t in enumerate(self.tasks)}


__all__ = ["TaskBalancer"]
