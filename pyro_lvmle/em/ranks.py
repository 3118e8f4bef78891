r"""Sums over the processes of a data-parallel run on :mod:`torch.distributed`.

Each process (a *rank*) holds a shard of the data, its plate declared over the whole data
set and subsampled with the rank's global indices (:func:`pyro_lvmle.parallel.shard`). Pyro
scales the rank's log densities by :math:`N / B_r`; weighted by the rank's share
:math:`B_r / N` of the data, the ranks' values add up to the full data's:

.. math::

    Q(\theta) = \sum_{r=1}^{R} \frac{B_r}{N}\, Q_r(\theta), \qquad
    \nabla Q(\theta) = \sum_{r=1}^{R} \frac{B_r}{N}\, \nabla Q_r(\theta),

exactly for the terms inside the data plate (their :math:`N/B_r` cancels) and for those
outside it (the shares add up to one). An EM driver given a :class:`RankSum` (its ``ranks``
argument) reduces so every sum over the data (its Q-function's value and gradient in the
M-step, its sufficient statistics, its Monte Carlo error, its metrics), so that every rank
takes the same M-step from the same parameters and records the same history.

Every collective is preceded by a status exchange (one small ``all_gather``): a rank whose
step raised tells the others (the driver calls :meth:`RankSum.fail`), which raise
:class:`RankFailure` at their next collective instead of waiting for it.
:class:`OneProcess` is the single-process stand-in whose sums are the values themselves.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as distributed

from ..traces.plate import data_share

__all__ = ["OneProcess", "RankFailure", "RankSum", "all_reduce_sum", "exchange_status"]


class RankFailure(RuntimeError):
    """Another rank of a data-parallel run raised; the message names the rank and its error."""


def world(group=None) -> tuple[int, int]:
    """This process's rank and the number of processes of ``group`` (the default group's if
    ``None``).

    :param group: a process group or ``None``.
    :raises ValueError: if :mod:`torch.distributed` is not initialized.
    """
    if not (distributed.is_available() and distributed.is_initialized()):
        raise ValueError("pyro_lvmle.parallel: torch.distributed is not initialized; call "
                         "torch.distributed.init_process_group(...) in each process first "
                         "(torchrun sets the environment it reads)")
    return distributed.get_rank(group), distributed.get_world_size(group)


def collective_device(group) -> torch.device:
    """Where the backend's collectives take tensors: the current GPU for NCCL, else the CPU."""
    if distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def exchange_status(error: BaseException | None, numel: int, group=None) -> None:
    """One small ``all_gather`` before a collective: whether each rank failed and how many
    entries it is about to reduce; raise on every rank if any failed (the failing rank its
    own error, the others :class:`RankFailure` naming it) or if the sizes differ.

    :param error: this rank's error, or ``None``.
    :param int numel: the entries this rank is about to reduce.
    :param group: the process group; the default group if ``None``.
    """
    rank, world_size = world(group)
    status = torch.tensor([float(error is not None), float(numel)],
                          device=collective_device(group), dtype=torch.float64)
    gathered = [torch.empty_like(status) for _ in range(world_size)]
    distributed.all_gather(gathered, status, group=group)
    failed = [r for r, s in enumerate(gathered) if s[0] > 0]
    if failed:
        messages = [None] * world_size
        text = None if error is None else \
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        distributed.all_gather_object(messages, text, group=group)
        if error is not None:
            raise error
        raise RankFailure("; ".join(f"rank {r} raised {messages[r]}" for r in failed))
    sizes = [int(s[1]) for s in gathered]
    if len(set(sizes)) > 1:
        raise ValueError(f"pyro_lvmle.parallel: the ranks reduce different sizes ({sizes}, "
                         f"this is rank {rank}); every rank must run the same model with the "
                         "same parameters and settings")


def all_reduce_sum(tensors: list[torch.Tensor], group=None, *, exchange: bool = True
                   ) -> list[torch.Tensor]:
    """Each tensor summed over the ranks, by one ``all_reduce`` of them flattened together
    (in their promoted dtype, on the device of the last one), after :func:`exchange_status`.

    :param list tensors: this rank's tensors (any shapes; not modified).
    :param group: the process group; the default group if ``None``.
    :param bool exchange: exchange the status first (``False`` for a caller that just did).
    """
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    device = tensors[-1].device
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=dtype) for t in tensors])
    if exchange:
        exchange_status(None, flat.numel(), group)
    distributed.all_reduce(flat, group=group)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view_as(t).to(t.dtype))
        start += t.numel()
    return out


class OneProcess:
    """The single-process stand-in for :class:`RankSum`: every sum is the value itself, the
    share of the data is one, nothing is exchanged. A driver without ``ranks`` uses it.

    Example::

        >>> import torch
        >>> OneProcess().sum([torch.ones(2)])[0].tolist()
        [1.0, 1.0]
    """

    #: whether the data are split over processes
    distributed = False

    def sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The tensors themselves.

        :param list tensors: this process's tensors.
        """
        return list(tensors)

    def mean(self, values: list[float]) -> list[float]:
        """The values themselves.

        :param list values: this process's numbers.
        """
        return list(values)

    def share(self, model, args=(), kwargs=None) -> float:
        """One: the process holds all the data.

        :param model: the Pyro model.
        :param tuple args: its arguments.
        :param dict kwargs: its keyword arguments.
        """
        return 1.0

    def check_draws(self, potential, where: str) -> None:
        """Refuse a mini-batch: in one process the driver's Q-function needs every datum.

        :param potential: the :class:`~pyro_lvmle.traces.Potential` the chains target.
        :param str where: the driver, for the message.
        :raises ValueError: if the model subsampled a plate.
        """
        if potential.batched_plates:
            raise ValueError(f"{where}: the model subsampled a plate; the Q-function needs "
                             "every datum in each iteration (drop subsample_size), or use SVI "
                             "with lv.MCMCGradient for mini-batches")

    def broadcast(self, leaves) -> None:
        """Nothing to do.

        :param leaves: the parameters.
        """

    def fail(self, error: BaseException) -> None:
        """Nothing to tell.

        :param error: this process's error.
        """


class RankSum(OneProcess):
    r"""Sums over the ranks of a data-parallel EM run; give it to a driver as ``ranks``.

    Every rank runs the same driver, with the same settings, on its own shard: the model's
    data plate over the whole data set, subsampled with the rank's global indices. The driver
    keeps the chains of its own data (by global index), weights its sums by its share
    :math:`B_r / N` (:meth:`share`), and reduces them with :meth:`sum`; the first step
    starts every rank from rank 0's parameters (:meth:`broadcast`), as
    :class:`torch.nn.parallel.DistributedDataParallel` does.

    :param group: the process group; the default group if ``None``.

    Example (each process of ``torchrun --nproc_per_node=2 fit.py``)::

        torch.distributed.init_process_group("gloo")
        idx = lv.parallel.shard(len(data))          # this rank's global indices
        saem = lv.SAEM(model, "hmc", ranks=lv.parallel.RankSum())
        saem.run(data[idx], idx, len(data))         # model: plate("data", N, subsample=idx)

    References:

    [1] Li et al. (2020), "PyTorch Distributed: experiences on accelerating data parallel
    training", VLDB.
    """

    distributed = True

    def __init__(self, group=None):
        self.group = group
        self.rank, self.world_size = world(group)

    def __repr__(self) -> str:
        return f"RankSum(rank={self.rank}, world_size={self.world_size})"

    def check_draws(self, potential, where: str) -> None:
        """Refuse latent sites outside the sharded plate: each rank would draw them from
        their posterior given its own shard only (a population mean, a shared scale),
        and the summed Q-function would mix them.

        :param potential: the :class:`~pyro_lvmle.traces.Potential` the chains target.
        :param str where: the driver, for the message.
        :raises ValueError: for a latent site outside every plate the rank subsampled.
        """
        indices = potential.subsample_indices
        outside = [site.name for site in potential.sites
                   if not any(indices[plate].numel() < full_size
                              for plate, _, full_size in site.subsampled)]
        if outside and self.world_size > 1:
            raise ValueError(f"{where}: latent sites {outside} lie outside the data plate "
                             "each rank shards; their posterior needs every rank's data. "
                             "Make them parameters, or fit in one process")

    def sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed over the ranks (one status exchange, one ``all_reduce``).

        :param list tensors: this rank's tensors.
        """
        return all_reduce_sum(list(tensors), self.group)

    def mean(self, values: list[float]) -> list[float]:
        """Each number's mean over the ranks (for metrics such as acceptance rates).

        :param list values: this rank's numbers.
        """
        summed = self.sum([torch.tensor(values, dtype=torch.float64,
                                        device=collective_device(self.group))])[0]
        return (summed / self.world_size).tolist()

    def share(self, model, args=(), kwargs=None) -> float:
        """This rank's share :math:`B_r / N` of the data (from its subsampled plate,
        :func:`~pyro_lvmle.traces.plate.data_share`), checked to add up to one over the ranks.

        :param model: the Pyro model.
        :param tuple args: its arguments (this rank's shard).
        :param dict kwargs: its keyword arguments.
        :raises ValueError: if the shares do not add up to one (shards that overlap or miss
            data, or a plate sized by the shard).
        """
        share = data_share(model, args, kwargs or {})
        shares = torch.zeros(self.world_size, dtype=torch.float64,
                             device=collective_device(self.group))
        shares[self.rank] = share
        (shares,) = all_reduce_sum([shares], self.group)
        if abs(shares.sum().item() - 1.0) > 1e-9:
            raise ValueError(
                f"RankSum: the ranks hold shares {[round(s, 6) for s in shares.tolist()]} of "
                "the data plate, which add up to "
                f"{shares.sum().item():.6g}, not 1: each rank must subsample the plate over "
                "the whole data set with its own global indices (pyro.plate('data', N, "
                "subsample=lv.parallel.shard(N))), every datum on one rank")
        return share

    def broadcast(self, leaves) -> None:
        """Set the parameter leaves to rank 0's values, in place.

        :param leaves: the unconstrained parameter tensors, in the same order on every rank.
        """
        leaves = list(leaves)
        exchange_status(None, sum(leaf.numel() for leaf in leaves), self.group)
        with torch.no_grad():
            for leaf in leaves:
                distributed.broadcast(leaf.data, src=distributed.get_global_rank(
                    self.group, 0) if self.group is not None else 0, group=self.group)

    def fail(self, error: BaseException) -> None:
        """Tell the other ranks that this one raised ``error`` (they raise
        :class:`RankFailure`); the caller raises ``error`` itself.

        :param error: this rank's error.
        """
        try:
            exchange_status(error, 0, self.group)
        except BaseException as raised:
            if raised is not error:
                raise
