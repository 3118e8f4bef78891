r"""The marginal-likelihood gradient by Fisher's identity, with persistent Markov chains.

.. math::

    \nabla_\theta \log p(x; \theta) = \mathbb{E}_{p(z \mid x; \theta)}
        \big[\nabla_\theta \log p(x, z; \theta)\big]
    \approx \frac{1}{SC} \sum_{c=1}^{C}\sum_{s=1}^{S} \nabla_\theta \log p(x, z_{cs}; \theta),

with :math:`z_{cs}` the :math:`s`-th kept state of chain :math:`c`, held fixed (detached).
:class:`MCMCGradient` is a ``pyro.infer.ELBO`` whose loss is
:math:`-\frac{1}{SC}\sum \log p(x, z_{cs}; \theta)`: ``SVI`` with it (and
:func:`empty_guide`) is stochastic-gradient maximum likelihood. Between steps the chains
persist (warm start, adapted step size and mass kept), so a step costs a few transitions
rather than a fresh MCMC run; each transition's target moves a little with the parameters,
which is the regime of stochastic approximation with Markovian noise (Younes 1989; Gu &
Kong 1998; Delyon, Lavielle & Moulines 1999).

With ``kernel="ula"``, many chains and one transition per step this is the particle
gradient descent ("PGD") of Kuntz, Lim & Johansen (2023).

The chains are moved through the :class:`~pyro_lvmle.samplers.Sampler` protocol alone
(``init``, ``warmup``, ``step``), on the posterior target
:class:`~pyro_lvmle.traces.Potential`, and kept in a :class:`~pyro_lvmle.samplers.ChainStore`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import check_int
from ..samplers import chain_diagnostics, make_sampler
from ..traces import Potential, check_normalized
from ..traces.normalization import check_fixed_supports
from ..traces.params import call_with_params
from ..traces.particles import guess_max_plate_nesting
from .chain_loss import TRACK_RATE, ChainLoss
from .newton import assign_flat, flatten
from .precondition import NewtonPreconditioner, PreconditionerState

__all__ = ["Draws", "MCMCGradient", "empty_guide"]


def empty_guide(*args, **kwargs) -> None:
    """A guide with no sites, for losses that ignore the guide (:class:`MCMCGradient`).

    ``SVI(model, lv.empty_guide, optim, loss=lv.MCMCGradient())`` optimizes the model's
    parameters by maximum likelihood.

    :param args: ignored (the model's arguments).
    :param kwargs: ignored.
    """
    return None


class Draws(NamedTuple):
    """The kept states of one call.

    :ivar potential: the :class:`~pyro_lvmle.traces.Potential` they target.
    :ivar torch.Tensor positions: ``(C, S, D)`` packed positions, ``C`` chains, ``S`` kept.
    :ivar dict diagnostics: as :attr:`MCMCGradient.diagnostics`.
    """

    potential: Potential
    positions: torch.Tensor
    diagnostics: dict


class MCMCGradient(ChainLoss):
    r"""Maximum-likelihood gradients by Fisher's identity from persistent Markov chains.

    Each call advances ``num_chains`` chains on the model's latent sites given the data and
    the current parameters (``num_samples * thinning`` transitions, after ``warmup_steps``
    adapting ones when the chains are new), then returns (and, in ``loss_and_grads``,
    backpropagates) :math:`-\frac{1}{SC}\sum_{s,c} \log p(x, z_{cs}; \theta)` with the
    samples detached. Enumerable discrete latents are summed out (marked or not); others (a
    Poisson count) are sampled by a discrete step alternating with the gradient step.

    :param kernel: ``"nuts"`` (Pyro's NUTS, one kernel per chain, adaptation kept across
        calls), ``"hmc"`` (the batched HMC with ``num_steps`` leapfrog steps), ``"mala"``,
        ``"ula"`` (batched Langevin, unadjusted), a ``pyro.infer.HMC``/``NUTS`` kernel of the
        same model, a functional step such as :func:`~pyro_lvmle.samplers.hmc_step`, or a
        :class:`~pyro_lvmle.samplers.Sampler` (see :func:`~pyro_lvmle.samplers.make_sampler`).
    :param int num_samples: kept states per chain per call.
    :param int warmup_steps: adapting transitions when chains start (step size by dual
        averaging, diagonal mass in Stan's windows); ``0`` keeps ``step_size`` fixed.
    :param int num_chains: chains, all advanced at once by the batched kernels.
    :param bool persistent: keep the chains (and their adaptation) between calls; ``False``
        restarts them from the prior on every call, Monte Carlo EM style.
    :param int thinning: transitions between kept states.
    :param int max_plate_nesting: the model's deepest plate nesting; guessed if ``None``.
    :param precondition: ``None`` (the plain gradient), ``"full"`` or ``"diagonal"`` (a
        :class:`~pyro_lvmle.NewtonPreconditioner` with its defaults) or a
        :class:`~pyro_lvmle.NewtonPreconditioner`: the gradient becomes the Newton direction
        :math:`\tilde I^{-1} g` with Louis' observed information from the same draws,
        averaged over steps (see **Preconditioning**).
    :param sampler_options: the sampler's settings, as :func:`~pyro_lvmle.samplers.make_sampler`
        takes them: ``step_size``, ``num_steps`` (leapfrog steps of ``"hmc"``),
        ``target_accept``, ``adapt_mass``, ``shared_step_size``, ``discrete_step`` (``"mwg"``
        or ``"gwg"``: how discrete latents that cannot be summed out are sampled),
        ``track_rate`` (0.02 here: after warm-up the batched kernels' step size follows the
        posterior as the parameters move, on the acceptance averaged over the chains; ``0``
        freezes it; see :class:`~pyro_lvmle.samplers.BatchedKernel`).

    **Mini-batches.** When latent sites live in a subsampled :class:`~pyro.plate`, every
    datum keeps its own chain state (position and mass, full size, indexed by the plate's
    indices): a step moves only the chains of its batch, and a datum seen for the first time
    starts from the prior and is warmed up with its batch. The plate's ``N/B`` scale makes the
    gradient an unbiased estimate of the full-data one (given mixed chains). Other data (a
    data set of another size) start new chains.

    **Preconditioning.** With ``precondition``, :meth:`differentiable_loss` returns the same
    value with the surrogate gradient :math:`-\tilde I^{-1} g` in the optimizer's
    (unconstrained) coordinates, so ``loss``, ``loss_and_grads`` and ``.grad`` all carry the
    preconditioned direction and ``pyro.optim.SGD({"lr": 0.5})`` takes damped Newton steps
    whose rate does not depend on the parameters' scales (:doc:`em_slow`). It needs every
    datum in each step (no subsampled plate); ``loss`` (no gradient) leaves the averaged
    information as it was. The averaged information is :attr:`preconditioner_state`, saved
    by :meth:`state_dict`, and the diagnostics gain ``decrement`` (the Newton decrement
    :math:`g^\top \tilde I^{-1} g`), ``fraction_missing``, ``num_clamped``, ``radius``
    and ``log_likelihood_change`` (the importance estimate for the full direction).

    **Diagnostics** of the last call are in :attr:`diagnostics`: ``accept_prob``,
    ``num_divergent``, ``step_size`` (mean over chains), ``ess`` (smallest effective sample
    size over coordinates; ``nan`` below 4 samples per chain), ``num_transitions`` and
    ``warmup`` (whether this call warmed chains up).

    References: Fisher (1925); Louis (1982); Gu & Kong (1998); Kuntz, Lim & Johansen (2023),
    "Particle algorithms for maximum likelihood training of latent variable models".

    Example::

        >>> import pyro, torch, pyro_lvmle as lv
        >>> model = lv.models.LinearGaussian(dim=2)
        >>> data = model.simulate(50, params={"w": torch.tensor([1.0, -1.0])})
        >>> loss = lv.MCMCGradient("hmc", num_chains=4, warmup_steps=50)
        >>> svi = pyro.infer.SVI(model, lv.empty_guide, pyro.optim.Adam({"lr": 0.05}), loss)
        >>> losses = [svi.step(data) for _ in range(20)]
        >>> sorted(loss.diagnostics)
        ['accept_prob', 'ess', 'num_divergent', 'num_transitions', 'step_size', 'warmup']
    """

    def __init__(self, kernel="nuts", num_samples: int = 1, warmup_steps: int = 100,
                 num_chains: int = 1, persistent: bool = True, thinning: int = 1, *,
                 max_plate_nesting: int | None = None, precondition=None, **sampler_options):
        where = "MCMCGradient"
        if isinstance(precondition, str) and precondition in ("full", "diagonal"):
            precondition = NewtonPreconditioner(diagonal=precondition == "diagonal")
        if not (precondition is None or isinstance(precondition, NewtonPreconditioner)):
            raise ValueError(f"{where}: precondition must be None, 'full', 'diagonal' or a "
                             f"NewtonPreconditioner, got {precondition!r}")
        self.precondition = precondition
        #: the preconditioner's averaged information (``None`` before the first gradient)
        self.preconditioner_state: PreconditionerState | None = None
        self.num_samples = check_int(where, "num_samples", num_samples, 1)
        self.num_chains = check_int(where, "num_chains", num_chains, 1)
        if precondition is not None and num_chains * num_samples < 2:
            raise ValueError(f"{where}: precondition needs at least 2 draws per step (Louis' "
                             "missing information is their scores' covariance; one draw "
                             "would make the direction EM's, not Newton's): pass "
                             "num_chains=16 or more")
        self.thinning = check_int(where, "thinning", thinning, 1)
        self.warmup_steps = check_int(where, "warmup_steps", warmup_steps, 0)
        # the posterior drifts as the parameters move: the step size follows it after warm-up
        self._options = {"adapt_step_size": warmup_steps > 0, "track_rate": TRACK_RATE,
                         **sampler_options}
        super().__init__(num_chains, num_chains * num_samples, max_plate_nesting)
        self.kernel = kernel
        self.persistent = bool(persistent)
        try:  # bad settings are refused here; "nuts" is built on the model at the first call
            sampler = make_sampler("hmc" if kernel == "nuts" else kernel, **self._options)
        except (ValueError, TypeError) as error:
            raise type(error)(f"{where}: {error}") from None
        self.sampler = None if kernel == "nuts" else sampler
        self._vectorization = None
        self.samples: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return (f"MCMCGradient(kernel={self.kernel!r}, num_samples={self.num_samples}, "
                f"warmup_steps={self.warmup_steps}, num_chains={self.num_chains}, "
                f"persistent={self.persistent}, thinning={self.thinning}"
                + ("" if self.precondition is None else f", precondition={self.precondition!r}")
                + ")")


    def draw(self, model, args=(), kwargs=None, num_samples: int | None = None) -> Draws:
        """Advance the chains for the model's current parameters and data and return the
        kept states, as a call of the loss does.

        :param model: the Pyro model.
        :param tuple args: its arguments.
        :param dict kwargs: its keyword arguments.
        :param int num_samples: kept states per chain (``self.num_samples`` by default).
        """
        kwargs = kwargs or {}
        num_samples = self.num_samples if num_samples is None else num_samples
        if self._model is not None and model != self._model:  # bound methods: ==
            raise ValueError("MCMCGradient: these chains belong to another model; use one "
                             "MCMCGradient per model")
        if self._model is None:  # an undirected model's posterior gradient would be wrong
            check_normalized(model, args, kwargs, where="MCMCGradient")
            check_fixed_supports(model, args, kwargs, where="MCMCGradient")
        self._model = model
        if self.max_plate_nesting is None:
            self.max_plate_nesting = guess_max_plate_nesting(model, empty_guide, args, kwargs)
        if self.sampler is None:
            self.sampler = make_sampler("nuts", model, max_plate_nesting=self.max_plate_nesting,
                                        **self._options)
        if not self.persistent:
            self.chains.reset()
        with torch.enable_grad():  # the samplers differentiate the potential, even in loss()
            potential = Potential(model, args, kwargs, max_plate_nesting=self.max_plate_nesting,
                                  vectorization=self._vectorization)
            self._vectorization = potential.vectorization  # chosen once per model
            positions, infos, state, warmed = self.chains.advance(
                self.sampler, potential, num_samples=num_samples, thinning=self.thinning,
                warmup_steps=self.warmup_steps)
        diagnostics = {**chain_diagnostics(infos, positions, state), "warmup": warmed}
        self.diagnostics = diagnostics
        flat = positions.reshape(-1, potential.dim)
        self.samples = {name: value.reshape((flat.shape[0],) + site.shape) for site, (name, value)
                        in zip(potential.sites, potential.unpack(flat).items(), strict=True)}
        return Draws(potential, positions, diagnostics)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        r""":math:`-\frac{1}{SC}\sum_{s,c}\log p(x, z_{cs}; \theta)` after advancing the chains;
        differentiable in the model's parameters (the samples are fixed).

        :param model: the Pyro model.
        :param guide: ignored (pass :func:`empty_guide`).
        """
        draws = self.draw(model, args, kwargs)
        flat = draws.positions.flatten(0, 1)
        plain = self.precondition is None or not torch.is_grad_enabled()
        log_joint, params = (draws.potential.log_joint(flat), None) if plain \
            else call_with_params(draws.potential.log_joint, flat)
        if not torch.isfinite(log_joint).all():
            raise ValueError(
                "MCMCGradient: log p(x, z) is not finite at the chains' states; check the "
                "model's parameters (a scale at 0, a probability at 0 or 1) and data"
            )
        return -log_joint.mean() if plain else self._preconditioned(draws, log_joint, params)

    def _preconditioned(self, draws, log_joint, params) -> torch.Tensor:
        r"""The loss's value with the surrogate gradient :math:`-\tilde I^{-1} g`."""
        if draws.potential.batched_plates:
            raise ValueError("MCMCGradient: precondition needs every datum in each step (the "
                             "information of a mini-batch is not the data's); drop "
                             "subsample_size or set precondition=None")
        leaves = [leaf for leaf in params.values() if leaf.requires_grad]
        if not leaves:
            return -log_joint.mean()
        start, flat = flatten(leaves), draws.positions.flatten(0, 1)

        def evaluate(step):  # the log joints at the draws with the parameters moved
            assign_flat(leaves, start + step)
            with torch.no_grad():
                return draws.potential.log_joint(flat)

        try:
            out, self.preconditioner_state = self.precondition(
                self.preconditioner_state, log_joint, leaves, evaluate)
        finally:
            assign_flat(leaves, start)
        step = out.newton
        self.diagnostics.update(decrement=step.decrement, fraction_missing=step.fraction_missing,
                                num_clamped=step.num_clamped, radius=out.radius,
                                log_likelihood_change=out.change)
        surrogate = -(step.step * torch.cat([leaf.reshape(-1) for leaf in leaves])).sum()
        return -log_joint.mean().detach() + (surrogate - surrogate.detach())

    def state_dict(self) -> dict:
        """:meth:`ChainLoss.state_dict <pyro_lvmle.gradients.ChainLoss.state_dict>` and the
        preconditioner's averaged information (``"precondition"``; ``None`` before the first
        gradient or without preconditioning)."""
        state = self.preconditioner_state
        return {**super().state_dict(),
                "precondition": None if state is None else state._asdict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s chains and averaged information.

        :param dict state: as :meth:`state_dict` returned it.
        """
        super().load_state_dict(state)
        saved = state.get("precondition")
        if saved is not None and self.precondition is None:
            raise ValueError("MCMCGradient.load_state_dict: the state holds a "
                             "preconditioner's information but this loss has "
                             "precondition=None; pass the same precondition as when saved")
        self.preconditioner_state = None if saved is None else PreconditionerState(**saved)
