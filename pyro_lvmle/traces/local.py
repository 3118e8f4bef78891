r"""Local latents: a potential whose every site lives in one plate, as independent targets,
one per datum.

When every latent and every observed site of a model lies in a plate over the data (a
mixture's labels, a VAE's codes, a mixed model's random effects with the subjects as the
plate), and the plate is not subsampled, the energy is a sum of one term per datum, each
depending on that datum's coordinates only:

.. math::

    U(q) = \sum_{n=1}^N U_n(q_n), \qquad
    p(z \mid x) = \prod_n p(z_n \mid x_n).

:class:`LocalTarget` presents the potential's ``C`` chains over all the data as ``C N``
chains of one datum each (the sampler protocol's :class:`~pyro_lvmle.samplers.Target`, rows
``(C N, d)``), so that a sampler accepts or rejects each datum's move on its own, and an
annealed importance sampling run gives each datum its own weight: an estimate of
:math:`p(x_n)` per datum, and of :math:`\log p(x) = \sum_n \log p(x_n)` with far less
variance than one weight for the whole batch. One model run still evaluates every chain
and every datum.
"""

from __future__ import annotations

import pyro
import torch

from .layout import check_positions
from .particles import _is_subsample, _unit_frames
from .plate import CHAIN_PLATE, _log_probs, _trace
from .prior_guide import PriorGuide
from .units import independent_units

__all__ = ["LocalTarget", "local_plate"]


def local_plate(potential) -> str | None:
    """The plate that every sample site of ``potential`` lives in, at its full size, or
    ``None``: the potential is then not a sum of independent per-datum terms (a global
    latent or observation, a subsampled plate, enumerated or sampled discrete sites, the
    vmap path, which hides the plates, or a model whose data depend on each other's latents
    inside the plate: :func:`~pyro_lvmle.traces.units.independent_units` on prior draws).

    Where several plates hold every site, the largest is taken (the finest split).

    :param potential: a :class:`~pyro_lvmle.traces.Potential`.

    Example::

        >>> import pyro_lvmle as lv
        >>> from pyro_lvmle.traces import Potential
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> local_plate(Potential(model, (model.simulate(4),)))
        'data'
    """
    from .potential import Potential

    if not isinstance(potential, Potential) or potential.vectorization != "plate" \
            or potential.enumerated or potential.discrete_mask is not None \
            or potential.batched_plates:
        return None
    trace, _ = _trace(potential, potential.sample_prior(1), jacobian=True, beta=None,
                      enumerate=False)
    sites = [site for site in trace.nodes.values()
             if site["type"] == "sample" and not _is_subsample(site)]
    common = {f.name: f.size for f in _unit_frames(sites)
              if f.name != CHAIN_PLATE and f.size == (f.full_size or f.size)}
    if not common:
        return None
    # every latent site must hold one value per datum along that plate's axis
    name = max(common, key=common.get)
    if any(name not in {plate for plate, _, _ in site.subsampled} for site in potential.sites):
        return None
    independent = independent_units(potential.model, PriorGuide(potential.model),
                                    potential.args, potential.kwargs,
                                    max_plate_nesting=potential.max_plate_nesting)
    return name if independent else None


class LocalTarget:
    """A potential's chains over all the data as independent chains of one datum each.

    :param potential: a :class:`~pyro_lvmle.traces.Potential` (or a
        :meth:`~pyro_lvmle.traces.Potential.tempered` view) whose every site lies in ``plate``.
    :param str plate: the plate, from :func:`local_plate`.
    :raises ValueError: if a latent site is not in ``plate``.

    :ivar int dim: coordinates per datum, ``d``.
    :ivar int num_data: ``N``, the plate's size.

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> from pyro_lvmle.traces import Potential
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> potential = Potential(model, (model.simulate(4),))
        >>> local = LocalTarget(potential, "data")
        >>> q = potential.sample_prior(3)
        >>> rows = local.split(q)
        >>> rows.shape, bool(torch.equal(local.join(rows), q))
        (torch.Size([12, 2]), True)
        >>> bool(torch.allclose(local(rows).reshape(3, 4).sum(-1), potential(q)))
        True
    """

    def __init__(self, potential, plate: str):
        self.potential, self.plate = potential, plate
        self._axes, sizes = [], set()
        for site in potential.sites:
            axes = [(axis, size) for name, axis, size in site.subsampled if name == plate]
            if not axes:
                raise ValueError(f"LocalTarget: latent site {site.name!r} is not in the plate "
                                 f"{plate!r}; its posterior is not one per datum")
            self._axes.append(axes[0][0])
            sizes.add(axes[0][1])
        if len(sizes) != 1:
            raise ValueError(f"LocalTarget: the latent sites see the plate {plate!r} with "
                             f"different sizes {sorted(sizes)}")
        self.num_data = sizes.pop()
        self.dim = potential.dim // self.num_data

    def tempered(self, beta) -> LocalTarget:
        """The same split of :meth:`Potential.tempered(beta)
        <pyro_lvmle.traces.Potential.tempered>`: ``beta`` a float (one for every row).

        :param beta: the inverse temperature.
        """
        beta = torch.as_tensor(beta)
        if beta.dim() != 0:
            raise ValueError("LocalTarget.tempered: beta must be one value for every chain "
                             f"and datum, got shape {tuple(beta.shape)}")
        return LocalTarget(self.potential.tempered(beta), self.plate)

    def _moved(self, site, axis):
        """The site's unconstrained shape per chain with the plate's axis first."""
        shape = list(site.batched_shape[1:])
        shape.insert(0, shape.pop(axis - 1))
        return shape

    def split(self, position: torch.Tensor) -> torch.Tensor:
        """Rows ``(C N, d)`` of positions ``(C, D)``: row ``c N + n`` holds datum ``n``'s
        coordinates in chain ``c``.

        :param torch.Tensor position: ``(C, D)``.
        """
        check_positions(position, self.potential.dim)
        num_chains, parts = position.shape[0], []
        for site, axis in zip(self.potential.sites, self._axes, strict=True):
            block = position[:, site.offset:site.offset + site.numel]
            block = block.reshape((num_chains,) + tuple(site.batched_shape[1:]))
            parts.append(block.movedim(axis, 1).reshape(num_chains, self.num_data, -1))
        return torch.cat(parts, -1).reshape(num_chains * self.num_data, self.dim)

    def join(self, rows: torch.Tensor) -> torch.Tensor:
        """Positions ``(C, D)`` of rows ``(C N, d)``, the inverse of :meth:`split`.

        :param torch.Tensor rows: ``(C N, d)``.
        """
        check_positions(rows, self.dim)
        if rows.shape[0] % self.num_data:
            raise ValueError(f"LocalTarget: {rows.shape[0]} rows are not a multiple of the "
                             f"{self.num_data} data")
        num_chains = rows.shape[0] // self.num_data
        per_datum = rows.reshape(num_chains, self.num_data, self.dim)
        parts, start = [], 0
        for site, axis in zip(self.potential.sites, self._axes, strict=True):
            width = site.numel // self.num_data
            block = per_datum[..., start:start + width].reshape(
                [num_chains] + self._moved(site, axis))
            parts.append(block.movedim(1, axis).reshape(num_chains, site.numel))
            start += width
        return torch.cat(parts, -1)

    def energies(self, position: torch.Tensor) -> torch.Tensor:
        """Each datum's energy :math:`U_n` per chain, ``(C, N)``, for positions ``(C, D)``:
        its sites' log densities (scaled and tempered as the potential's) and Jacobians;
        their sum over ``n`` is the potential's energy.

        :param torch.Tensor position: ``(C, D)``.
        """
        potential = self.potential
        num_chains = position.shape[0]
        rank = potential.max_plate_nesting + 1
        trace, unpacked = _trace(potential, position, jacobian=True,
                                 beta=potential._chain_beta(position), enumerate=False)
        total = position.new_zeros(num_chains, self.num_data)
        for name, log_prob in _log_probs(trace).items():
            frame = next((f for f in trace.nodes[name]["cond_indep_stack"]
                          if f.name == self.plate), None)
            if frame is None:
                raise ValueError(f"LocalTarget: site {name!r} is not in the plate "
                                 f"{self.plate!r}; its density is not one per datum")
            log_prob = torch.as_tensor(log_prob)
            log_prob = log_prob.reshape((1,) * max(rank - log_prob.dim(), 0) + log_prob.shape)
            chain_axis, data_axis = log_prob.dim() - rank, log_prob.dim() + frame.dim
            others = tuple(d for d in range(log_prob.dim()) if d not in (chain_axis, data_axis))
            summed = log_prob.sum(others) if others else log_prob
            total = total + summed.reshape(-1, self.num_data)
        for site, axis in zip(potential.sites, self._axes, strict=True):
            log_det = unpacked[site.name][1]
            if log_det.dim() <= axis:  # constant in the position: shared out evenly
                total = total + log_det / self.num_data
                continue
            log_det = log_det.reshape((num_chains,) + log_det.shape[1:]).movedim(axis, 1)
            total = total + log_det.reshape(num_chains, self.num_data, -1).sum(-1)
        return -total

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """:math:`U_n(q_{c,n})` per row, shape ``(C N,)``.

        :param torch.Tensor rows: ``(C N, d)``.
        """
        with pyro.validation_enabled(False):
            return self.energies(self.join(rows)).reshape(-1)

    def value_and_grad(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies and their gradients per row, by one model run and one backward pass
        (datum ``n``'s coordinates enter only :math:`U_n`, so the gradient of the sum is
        each row's own); both detached.

        :param torch.Tensor rows: ``(C N, d)``.
        """
        with torch.enable_grad():
            rows = rows.detach().requires_grad_(True)
            energy = self(rows)
            (grad,) = torch.autograd.grad(energy.sum(), rows)
        return energy.detach(), grad.detach()

