r"""Block Gibbs sampling for models that expose their conditionals (a restricted Boltzmann
machine's :math:`p(h \mid v)` and :math:`p(v \mid h)`).

A model whose joint :math:`p(v, h)` has tractable conditionals on two blocks is sampled by
alternating exact draws,

.. math::

    h' \sim p(h \mid v), \qquad v' \sim p(v \mid h'),

and the chain on :math:`v` alone leaves the marginal :math:`p(v) = \sum_h p(v, h)` invariant:
:math:`h'` is an exact draw given :math:`v`, so :math:`(v, h')` is distributed as
:math:`p(v, h)` when :math:`v \sim p(v)`, and a Gibbs draw of :math:`v'` given :math:`h'`
keeps it so. The auxiliary block :math:`h` is drawn afresh at every step and never stored:
the chains' state is the target's position only, one :class:`~pyro_lvmle.samplers.ChainState`
as for every sampler.

**How a model exposes its conditionals.** Two callables, each taking the values of one block
(batched, leading chain dimension) and returning a ``torch.distributions.Distribution`` over
the other: ``latent_conditional(v) -> p(h | v)`` and ``observed_conditional(h) -> p(v | h)``,
with :math:`v` in the constrained shape of the target's site (``(C, *site shape)``, as
:meth:`~pyro_lvmle.traces.Potential.unpack` gives it). :class:`~pyro_lvmle.models.RBM` has
them as :meth:`~pyro_lvmle.models.RBM.hidden_conditional` and
:meth:`~pyro_lvmle.models.RBM.visible_conditional`. They must describe the model as it is
now: methods reading the current parameters do.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_callable
from .base import ChainState, StepInfo, run_steps
from .hmc import dual_averaging_init

__all__ = ["BlockGibbs"]


class BlockGibbs:
    r"""Alternating block Gibbs on a target's one site, from a model's two conditionals.

    One :meth:`step` draws :math:`h' \sim p(h \mid v)` then :math:`v' \sim p(v \mid h')`
    for every chain at once (two calls of the conditionals, no run of the model). The
    sampler implements the :class:`~pyro_lvmle.samplers.Sampler` protocol on a target with
    one site (the observed site of an undirected model, as
    ``Potential(model, args, uncondition=True)`` builds it).

    It never evaluates the target: a Gibbs draw needs no energy, and in contrastive
    divergence the energy is the cost that matters. The states it returns carry ``nan``
    as ``potential_energy`` and ``grad`` (not computed); another sampler's ``init(...,
    like=state)`` recomputes them. A Gibbs draw is always accepted (``accept_prob`` 1,
    ``energy_error`` ``nan``).

    The conditionals are those of the model itself (:math:`\beta = 1`): a tempered target
    (a :meth:`~pyro_lvmle.traces.Potential.tempered` view, an annealing path) is refused.

    :param latent_conditional: ``v -> p(h | v)``, a distribution whose ``sample()`` gives
        the auxiliary block for each chain.
    :param observed_conditional: ``h -> p(v | h)``, a distribution over the site's values
        ``(C, *site shape)``.
    :param str site: the target's site the chains move; by default its only site.

    References:

    [1] Geman & Geman (1984), "Stochastic relaxation, Gibbs distributions, and the Bayesian
    restoration of images", IEEE PAMI 6.

    [2] Hinton (2002), "Training products of experts by minimizing contrastive divergence",
    Neural Computation 14(8) (alternating Gibbs in an RBM).

    Example::

        >>> import torch, pyro_lvmle as lv
        >>> from pyro_lvmle.samplers import BlockGibbs
        >>> from pyro_lvmle.traces import Potential
        >>> rbm = lv.models.RBM(num_visible=6, num_hidden=4)
        >>> target = Potential(rbm.model, (rbm.simulate(3),), uncondition=True)
        >>> sampler = BlockGibbs(rbm.hidden_conditional, rbm.visible_conditional)
        >>> state = sampler.init(target.initial_position(2), target)
        >>> state, info = sampler.step(state, target)
        >>> state.position.shape, info.accept_prob
        (torch.Size([2, 18]), tensor([1., 1.]))
    """

    def __init__(self, latent_conditional, observed_conditional, *, site: str | None = None):
        self.latent_conditional = check_callable("BlockGibbs", "latent_conditional",
                                                 latent_conditional)
        self.observed_conditional = check_callable("BlockGibbs", "observed_conditional",
                                                   observed_conditional)
        if site is not None and not isinstance(site, str):
            raise TypeError(f"BlockGibbs: site must be a site name (str), got {site!r}")
        self.site = site

    def __repr__(self) -> str:
        return (f"BlockGibbs({_name(self.latent_conditional)}, "
                f"{_name(self.observed_conditional)})")

    def init(self, position: torch.Tensor, target, *, like: ChainState | None = None
             ) -> ChainState:
        """Chains at ``position`` ``(C, D)``; ``like``'s step sizes, mass and adaptation kept
        (a block Gibbs step uses none of them, but a store of chains keeps them).

        :param torch.Tensor position: starting points.
        :param target: the target (one site; see the class).
        :param ChainState like: an earlier state of the same chains.
        """
        self._check_target(target, position)
        position = position.detach()
        nan = position.new_full(position.shape[:1], math.nan)
        if like is not None:
            return like._replace(position=position, potential_energy=nan,
                                 grad=torch.full_like(position, math.nan))
        ones = position.new_ones(position.shape[:1])
        return ChainState(position, nan, torch.full_like(position, math.nan), ones,
                          torch.ones_like(position), dual_averaging_init(ones))

    def warmup(self, state: ChainState, target, num_steps: int
               ) -> tuple[ChainState, StepInfo]:
        """``num_steps`` plain steps (there is nothing to adapt); infos stacked.

        :param ChainState state: the chains.
        :param target: the target.
        :param int num_steps: transitions.
        """
        return run_steps(self, state, target, num_steps)

    def step(self, state: ChainState, target) -> tuple[ChainState, StepInfo]:
        """One sweep :math:`h' \\sim p(h \\mid v)`, :math:`v' \\sim p(v \\mid h')` of every chain.

        :param ChainState state: the chains.
        :param target: the target.
        """
        site = self._check_target(target, state.position)
        with torch.no_grad():
            if hasattr(target, "unpack"):
                value = target.unpack(state.position)[site]
                latent = self.latent_conditional(value).sample()
                new = self.observed_conditional(latent).sample().reshape(value.shape)
                position = target.pack({site: new})
            else:
                latent = self.latent_conditional(state.position).sample()
                position = self.observed_conditional(latent).sample().reshape(
                    state.position.shape)
        position = position.to(state.position)
        ones = torch.ones_like(state.potential_energy)
        info = StepInfo(ones, (position != state.position).any(-1),
                        torch.zeros_like(ones, dtype=torch.bool),
                        torch.full_like(ones, math.nan))
        return state._replace(position=position), info

    def _check_target(self, target, position):
        """The site to move; refuses tempered targets and targets of several sites."""
        beta = getattr(target, "beta", None)
        if beta is not None and not bool((torch.as_tensor(beta) == 1).all()):
            raise ValueError(
                "BlockGibbs: the target is tempered (beta != 1) but the conditionals are "
                "those of the model at beta = 1; use a generic step on tempered targets "
                "(make_sampler('gibbs') or 'gwg')")
        if position.dim() != 2 or position.shape[-1] != target.dim:
            raise ValueError(f"BlockGibbs: positions must be (num_chains, {target.dim}), got "
                             f"{tuple(position.shape)}")
        sites = [s.name for s in getattr(target, "sites", ())]
        if not sites:
            return self.site
        if self.site is None:
            if len(sites) != 1:
                raise ValueError(f"BlockGibbs: the target has sites {sites}; name the one the "
                                 "conditionals describe with site=, and let the others be "
                                 "summed out")
            return sites[0]
        if self.site not in sites or len(sites) != 1:
            raise ValueError(f"BlockGibbs: site {self.site!r} must be the target's only site; "
                             f"its sites are {sites}")
        return self.site


def _name(fn):
    return getattr(fn, "__qualname__", None) or repr(fn)
