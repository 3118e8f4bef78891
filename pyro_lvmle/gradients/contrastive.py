r"""The positive/negative-phase gradient of undirected models: contrastive divergence (CD-k)
and persistent contrastive divergence (PCD).

An undirected (energy-based) model has an unnormalized density
:math:`\tilde p(x; \theta)` and :math:`p(x; \theta) = \tilde p(x; \theta) / Z(\theta)`.
Written in Pyro, it observes ``x`` from an improper density
(:class:`~pyro.distributions.ImproperUniform`) and adds :math:`\log \tilde p` with
:func:`pyro.factor`. Its log-likelihood gradient is the positive phase at the data minus
the negative phase under the model (seed 001):

.. math::

    \nabla_\theta \log p(x; \theta) = \nabla_\theta \log \tilde p(x; \theta)
        - \mathbb{E}_{x' \sim p(\cdot\,; \theta)}\big[\nabla_\theta \log \tilde p(x'; \theta)\big]
    \approx \nabla_\theta \log \tilde p(x; \theta)
        - \frac1C \sum_{c=1}^C \nabla_\theta \log \tilde p(x'_c; \theta),

with :math:`x'_c` the states of :math:`C` Markov chains on the model's observed sites (the
observations removed: ``Potential(model, args, uncondition=True)``). Contrastive divergence
starts them at the data and runs ``k`` transitions (Hinton 2002): cheap and biased. PCD keeps
them across optimization steps (Tieleman 2008): with slowly moving parameters they stay
near the model's distribution.
"""

from __future__ import annotations

import torch

from .._checks import check_int
from ..samplers import make_sampler, run_steps
from ..traces import Potential
from ..traces.particles import guess_max_plate_nesting
from .chain_loss import ChainLoss
from .fisher import empty_guide

__all__ = ["ContrastiveDivergence"]


class ContrastiveDivergence(ChainLoss):
    r"""The positive-minus-negative-phase gradient of an undirected model, for
    ``pyro.infer.SVI``: CD-k, or persistent contrastive divergence.

    Each call moves ``num_chains`` chains ``num_steps`` transitions on the model's observed
    sites (their observations removed) and returns the surrogate

    .. math::

        L(\theta) = -\Big(\log \tilde p(x; \theta)
            - \frac1C \sum_{c=1}^C \log \tilde p(x'_c; \theta)\Big),

    the chain states :math:`x'_c` held fixed, whose gradient is exactly minus the positive
    phase plus the negative phase: minus the estimate of :math:`\nabla_\theta \log p(x;
    \theta)`. **Its value is not a log-likelihood** (no :math:`\log Z` in it): it is the gap in
    log unnormalized density between the chains and the data, near 0 when the chains look
    like the data. Measure the likelihood with :func:`~pyro_lvmle.log_partition`. The guide
    is ignored (pass :func:`~pyro_lvmle.empty_guide`). ``loss``, ``loss_and_grads`` and
    ``differentiable_loss`` agree.

    A chain holds one value of every observed site: for data ``(N, V)`` in a plate, one
    chain is ``N`` negative samples, one per datum. Latent sites of the model that Pyro can
    enumerate are summed out (an RBM written with its hidden units as enumerated sites);
    other latent sites are not supported (their positive phase needs posterior samples):
    write them into the ``pyro.factor`` or mark them for enumeration.

    :param int num_steps: transitions per call (the ``k`` of CD-k).
    :param bool persistent: keep the chains between calls (PCD) instead of restarting them at
        the data.
    :param int num_chains: chains (each a full copy of the observed sites).
    :param sampler: the negative-phase sampler: a :class:`~pyro_lvmle.samplers.Sampler`
        (:class:`~pyro_lvmle.samplers.BlockGibbs` from a model's conditionals, a
        :class:`~pyro_lvmle.samplers.BatchedKernel`), or a name
        :func:`~pyro_lvmle.samplers.make_sampler` knows: ``"gibbs"`` (exact full conditionals
        for boolean and categorical sites), ``"gwg"`` (Gibbs-with-gradients), ``"ula"``,
        ``"mala"``, ``"hmc"`` (continuous sites); ``"auto"`` is ``"gibbs"`` when every
        coordinate is discrete, else ``"mala"``.
    :param int max_plate_nesting: the model's deepest plate nesting; guessed if ``None``.
    :param sampler_options: passed to :func:`~pyro_lvmle.samplers.make_sampler` for a named
        sampler (``step_size``, ``adapt_step_size``, ...).

    **Mini-batches.** Pass each batch as the model's data, or use a subsampled plate. With
    batches passed as data, PCD's chains are kept while the batch shape stays the same
    (Tieleman's fantasy particles: not tied to data) and restart at the data when it
    changes. With ``pyro.plate(..., subsample_size=B)``, each datum keeps its own chains
    (:class:`~pyro_lvmle.samplers.ChainStore`), and the plate's ``N/B`` scale makes both
    phases estimates of the full-data sums. The loss is a sum over the batch, as Pyro's
    losses are: divide a per-datum learning rate by the batch size.

    **Cost.** The :class:`~pyro_lvmle.traces.Potential` is built once per model and data
    shape and reused for later batches of that shape (rebuilt every call under a subsampled
    plate, whose indices it fixes); with :class:`~pyro_lvmle.samplers.BlockGibbs` a call runs
    the model twice (the chains' start and one run for both phases together).

    :attr:`diagnostics` of the last call: ``positive`` (:math:`\log\tilde p(x)`),
    ``negative`` (its mean over the chains), ``accept_prob`` (mean over transitions),
    ``num_steps``.

    References:

    [1] Hinton (2002), "Training products of experts by minimizing contrastive divergence",
    Neural Computation 14(8).

    [2] Tieleman (2008), "Training restricted Boltzmann machines using approximations to the
    likelihood gradient", ICML.

    [3] Younes (1989), "Parametric inference for imperfectly observed Gibbsian fields",
    Probability Theory and Related Fields 82.

    Example::

        >>> import pyro, torch, pyro_lvmle as lv
        >>> from pyro_lvmle.samplers import BlockGibbs
        >>> rbm = lv.models.RBM(num_visible=6, num_hidden=4)
        >>> data = rbm.simulate(50)
        >>> loss = lv.ContrastiveDivergence(
        ...     num_steps=1, persistent=True,
        ...     sampler=BlockGibbs(rbm.hidden_conditional, rbm.visible_conditional))
        >>> svi = pyro.infer.SVI(rbm.model, lv.empty_guide, pyro.optim.SGD({"lr": 1e-3}), loss)
        >>> gaps = [svi.step(data) for _ in range(5)]
        >>> sorted(loss.diagnostics)
        ['accept_prob', 'negative', 'num_steps', 'positive']
    """

    def __init__(self, num_steps: int = 1, persistent: bool = False, num_chains: int = 1,
                 sampler="auto", *, max_plate_nesting: int | None = None, **sampler_options):
        where = "ContrastiveDivergence"
        self.num_steps = check_int(where, "num_steps", num_steps, 1)
        self.num_chains = check_int(where, "num_chains", num_chains, 1)
        super().__init__(num_chains, num_chains, max_plate_nesting)
        self.persistent = bool(persistent)
        self._options = sampler_options
        if not (sampler == "auto" and not sampler_options):
            try:  # bad settings are refused here, not at the first step
                make_sampler("gibbs" if sampler == "auto" else sampler, **sampler_options)
            except (ValueError, TypeError) as error:
                raise type(error)(f"{where}: {error}") from None
        self.sampler = None if isinstance(sampler, str) else make_sampler(sampler)
        self._sampler_name = sampler if isinstance(sampler, str) else None
        self._potentials: dict = {}

    def __repr__(self) -> str:
        sampler = self._sampler_name or self.sampler
        return (f"ContrastiveDivergence(num_steps={self.num_steps}, persistent="
                f"{self.persistent}, num_chains={self.num_chains}, sampler={sampler!r})")


    def potential(self, model, args=(), kwargs=None) -> Potential:
        """The negative-phase target for these arguments: the model's observed sites with the
        observations removed, built once per model and data shape.

        :param model: the Pyro model.
        :param tuple args: its arguments.
        :param dict kwargs: its keyword arguments.
        """
        kwargs = kwargs or {}
        if self._model is not None and model != self._model:  # bound methods: ==
            raise ValueError("ContrastiveDivergence: these chains belong to another model; "
                             "use one ContrastiveDivergence per model")
        self._model = model
        if self.max_plate_nesting is None:
            self.max_plate_nesting = guess_max_plate_nesting(model, empty_guide, args, kwargs)
        key = _shape_key(args, kwargs)
        cached = self._potentials.get(key) if key is not None else None
        if cached is not None:
            view = cached.__class__.__new__(cached.__class__)
            view.__dict__.update(cached.__dict__, args=tuple(args), kwargs=dict(kwargs))
            return view
        vectorization = next(iter(self._potentials.values())).vectorization \
            if self._potentials else None
        with torch.enable_grad():
            potential = Potential(model, args, kwargs, max_plate_nesting=self.max_plate_nesting,
                                  vectorization=vectorization, uncondition=True)
        latents = [site.name for site in potential.sites if not site.was_observed]
        if latents:
            raise ValueError(
                f"ContrastiveDivergence: the latent sites {latents} can be neither summed out "
                "nor left to the chains (their positive phase needs posterior draws given the "
                "data); mark them infer={'enumerate': 'parallel'} or sum them into the "
                "pyro.factor (as RBM does with its hidden units)")
        if key is not None and not potential.batched_plates:
            self._potentials = {key: potential}  # one data shape at a time
        return potential

    def draw(self, model, args=(), kwargs=None) -> tuple[Potential, torch.Tensor, list]:
        """Move the chains for the model's current parameters and data.

        :param model: the Pyro model.
        :param tuple args: its arguments.
        :param dict kwargs: its keyword arguments.
        :returns: the target, the positions ``(1 + C, D)`` (the data, then the chains) and
            the transitions' :class:`~pyro_lvmle.samplers.StepInfo`, stacked.
        """
        potential = self.potential(model, args, kwargs)
        sampler = self._sampler(potential)
        with torch.enable_grad():
            data = potential.initial_position(1)
            fresh = data.expand(self.num_chains, -1)
            self.chains.allocate(potential, fresh)
            if not self.persistent:
                self.chains.visited[""].fill_(False)
            position = self.chains.gather("position", potential, fresh=fresh)
            state = sampler.init(position, potential, like=self.chains.like(potential))
            state, info = run_steps(sampler, state, potential, self.num_steps)
            self.chains.save(potential, state)
        return potential, torch.cat([data, state.position]), info

    def _sampler(self, potential):
        if self.sampler is None:
            name = self._sampler_name
            if name == "auto":
                mask = potential.discrete_mask
                name = "gibbs" if mask is not None and bool(mask.all()) else "mala"
            self.sampler = make_sampler(name, **self._options)
        return self.sampler

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        r""":math:`-(\log\tilde p(x) - \frac1C\sum_c \log\tilde p(x'_c))` after moving the
        chains, differentiable in the model's parameters (the chains' states fixed); one run
        of the model for both phases.

        :param model: the Pyro model.
        :param guide: ignored (pass :func:`~pyro_lvmle.empty_guide`).
        """
        potential, positions, info = self.draw(model, args, kwargs)
        log_density = potential.log_joint(positions)
        positive, negative = log_density[0], log_density[1:].mean()
        if not torch.isfinite(log_density).all():
            raise ValueError(
                "ContrastiveDivergence: the log density is not finite at the data or at the "
                "chains' states; check the model's parameters and data")
        accept = info.accept_prob.mean()
        self.diagnostics = {"positive": positive.detach(), "negative": negative.detach(),
                            "accept_prob": accept, "num_steps": self.num_steps}
        return negative - positive


def _shape_key(args, kwargs):
    """What a potential's layout depends on: tensors by shape, dtype and device, the rest by
    value; ``None`` (rebuild) when a value cannot be compared."""
    def part(value):
        if torch.is_tensor(value):
            return ("tensor", tuple(value.shape), value.dtype, str(value.device))
        hash(value)
        return ("value", value)

    try:
        return (tuple(part(a) for a in args),
                tuple(sorted((k, part(v)) for k, v in kwargs.items())))
    except TypeError:
        return None

