r"""Data-parallel fits on :mod:`torch.distributed`: each process holds a shard of the data.

Every process (a *rank*) runs the same model on its own mini-batch, written as a subsampled
:class:`~pyro.plate` over the **global** data set: ``pyro.plate("data", N, subsample=idx)``
with ``idx`` this rank's global indices (:func:`shard`). Pyro then scales the plate's log
densities by :math:`N / B_r`, so each rank's loss :math:`L_r` is an unbiased estimate of the
full-data loss, and so is any mix of them with weights adding up to one.
:class:`DataParallel` weights each rank by its share of the ranks' data, :math:`B_r / \sum_s
B_s` (one ``all_reduce`` of the weighted gradients, the weighted loss and the weights):

.. math::

    \hat g = \sum_{r=1}^{R} \frac{B_r}{\sum_s B_s} \nabla_\theta L_r(\theta).

With shards that partition the data (:func:`shard`, which gives sizes differing by one when
:math:`R` does not divide :math:`N`) the weights are :math:`B_r / N` and :math:`\hat g` is
the full-data gradient exactly; an equal mean over ranks would count the data of a smaller
shard more (5 data on 2 ranks: the MLE of a mean moved from 4.0 to 5.0). With random
mini-batches of equal size on every rank they are :math:`1 / R`.

Every rank then takes the same optimizer step from the same parameters and stays in step.
It wraps any loss: Pyro's own ELBOs, the package's objectives and
:class:`~pyro_lvmle.MCMCGradient` (each rank keeps the chains of its own data: the chain store
is indexed by the global indices of the subsample).

A rank whose step raises does not leave the others waiting in a collective: the ranks first
exchange a status, and if any failed, every rank raises :class:`RankFailure` naming the rank
and its error (the failing rank re-raises its own error). A rank that dies without raising
(killed, out of memory) is caught by the process group's ``timeout``
(:func:`torch.distributed.init_process_group`).
"""

from __future__ import annotations

import torch
from pyro.infer import ELBO

from ._checks import check_int
from .em.ranks import (
    RankFailure,
    RankSum,
    all_reduce_sum,
    collective_device,
    exchange_status,
    world,
)
from .traces.params import call_with_params
from .traces.plate import data_share

__all__ = ["DataParallel", "RankFailure", "RankSum", "shard"]


def shard(num_data: int, rank: int | None = None, world_size: int | None = None
          ) -> torch.Tensor:
    """The global indices of ``rank``'s contiguous share of ``num_data`` data.

    Shares differ in size by at most one (as :func:`numpy.array_split`).

    :param int num_data: the size of the whole data set.
    :param int rank: this process's rank; the process group's if ``None``.
    :param int world_size: the number of processes; the process group's if ``None``.

    Example::

        >>> shard(10, rank=1, world_size=3).tolist()
        [4, 5, 6]
    """
    num_data = check_int("shard", "num_data", num_data, 1)
    if rank is None or world_size is None:
        group_rank, group_size = world()
        rank = group_rank if rank is None else rank
        world_size = group_size if world_size is None else world_size
    world_size = check_int("shard", "world_size", world_size, 1, num_data)
    rank = check_int("shard", "rank", rank, 0, world_size - 1)
    base, extra = divmod(num_data, world_size)
    start = rank * base + min(rank, extra)
    return torch.arange(start, start + base + (rank < extra))


class DataParallel(ELBO):
    r"""A loss whose gradient is averaged over the processes of a data-parallel run.

    :meth:`loss_and_grads` runs the wrapped loss on this rank's data, then replaces each
    parameter's ``.grad`` by its mean over ranks weighted by their shares of the data (one
    ``all_reduce`` of all gradients flattened together; the share from the model's
    subsampled plate, :func:`~pyro_lvmle.traces.plate.data_share`) and returns the weighted
    mean loss; :meth:`loss` returns the weighted mean loss. With
    :class:`pyro.infer.SVI` every rank then takes the same step. For the
    :class:`torch.nn.Module` route (``loss(model, guide)``, Lightning), wrap that module in
    :class:`torch.nn.parallel.DistributedDataParallel` instead: its forward is this rank's
    loss (:meth:`differentiable_loss`).

    :param loss: any Pyro loss with ``loss_and_grads`` (an ELBO, an objective of this
        package, :class:`~pyro_lvmle.MCMCGradient`).
    :param group: the process group; the default group if ``None``.
    :raises RankFailure: on every other rank when one rank's step raised (that rank raises
        its own error).

    Example (each process of ``torchrun --nproc_per_node=2 fit.py``)::

        torch.distributed.init_process_group("gloo")
        idx = lv.parallel.shard(len(data))         # this rank's global indices
        svi = SVI(model, guide, optim, loss=lv.parallel.DataParallel(lv.TraceIWAE_ELBO(8)))
        svi.step(data[idx], idx, len(data))        # model: plate("data", N, subsample=idx)

    References:

    [1] Li et al. (2020), "PyTorch Distributed: experiences on accelerating data parallel
    training", VLDB.
    """

    def __init__(self, loss, *, group=None):
        if not callable(getattr(loss, "loss_and_grads", None)):
            raise TypeError(f"DataParallel: loss must have loss_and_grads (a Pyro ELBO or an "
                            f"lv objective), got {type(loss).__name__}")
        super().__init__()
        self.inner = loss
        self.group = group

    def __repr__(self) -> str:
        return f"DataParallel({self.inner!r})"

    def loss(self, model, guide, *args, **kwargs) -> float:
        """This step's loss averaged over ranks (no gradients)."""
        value, share, error = None, None, None
        try:
            value = float(self.inner.loss(model, guide, *args, **kwargs))
            share = data_share(model, args, kwargs)
        except Exception as caught:  # every rank must learn of it before the next collective
            error = caught
        exchange_status(error, 2, self.group)  # the loss and the share
        return self._mean([torch.tensor([value], dtype=torch.float64,
                                        device=collective_device(self.group))], share)[0].item()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """This rank's differentiable loss (average it across ranks with DDP)."""
        return self.inner.differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Run the wrapped loss's ``loss_and_grads`` on this rank's data, then average every
        touched parameter's ``.grad`` and the loss over ranks."""
        value, params, share, error = None, {}, None, None
        try:
            value, params = call_with_params(self.inner.loss_and_grads, model, guide, *args,
                                             **kwargs)
            share = data_share(model, args, kwargs)
        except Exception as caught:
            error = caught
        names = sorted(params)  # every rank in the same order
        leaves = [params[name] for name in names]
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                 for leaf in leaves]
        exchange_status(error, sum(g.numel() for g in grads) + 2, self.group)  # loss, share
        device = grads[0].device if grads else collective_device(self.group)
        loss_value = torch.tensor([float(value)], dtype=torch.float64, device=device)
        averaged = self._mean([loss_value] + grads, share)
        for leaf, grad in zip(leaves, averaged[1:], strict=True):
            if leaf.requires_grad:
                leaf.grad = grad
        return averaged[0].item()

    def _mean(self, tensors: list[torch.Tensor], share: float) -> list[torch.Tensor]:
        """Each tensor's mean over ranks weighted by the ranks' shares of the data, by one
        ``all_reduce`` of the weighted tensors and the share, flattened together."""
        weight = torch.tensor([share], dtype=torch.float64, device=tensors[0].device)
        *sums, total = all_reduce_sum([t * share for t in tensors] + [weight], self.group,
                                      exchange=False)
        return [t / total.reshape(()).to(t.dtype) for t in sums]

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("DataParallel draws no traces itself; its wrapped loss does")

    def state_dict(self) -> dict:
        """The wrapped loss's state (its chains for :class:`~pyro_lvmle.MCMCGradient`): this
        rank's, to be saved per rank."""
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` on this rank."""
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(state)
