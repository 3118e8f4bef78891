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

import warnings
from functools import partial

import pyro.ops.jit
import torch

from .._checks import check_bool, check_int
from ..samplers import BlockGibbs, make_sampler, run_steps
from ..samplers.kernels import refuse_latent_kernels
from ..traces import Potential
from ..traces.normalization import warn_constant_factors
from ..traces.params import nonfinite_params
from ..traces.particles import guess_max_plate_nesting
from .chain_loss import TRACK_RATE, ChainLoss
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
    :param bool jit_compile: trace the step of warm persistent chains (a
        :class:`~pyro_lvmle.samplers.BlockGibbs` sweep and the model's run for both phases)
        into one graph with :func:`pyro.ops.jit.trace`, as Pyro's ``JitTrace_ELBO`` does: the
        Python of Pyro's handlers then runs once per data shape, not once per step. The model
        and the conditionals must not branch on tensor values (a graph's first call, and its
        first on other data, also run them eagerly from the same random state and raise if
        the graph disagrees); tracing draws no random numbers of the run's stream; the
        arguments must be tensors of a fixed shape per graph (a new shape is traced anew), and
        a subsampled plate or chains still to start run eagerly. Needs ``persistent=True`` and
        a ``BlockGibbs`` sampler.
    :param sampler_options: passed to :func:`~pyro_lvmle.samplers.make_sampler` for a named
        sampler (``step_size``, ``adapt_step_size``, ``track_rate``: 0.02 here, the step size
        of ``"hmc"``/``"mala"``/``"ula"`` following the acceptance rate as the parameters
        move, on the acceptance averaged over the chains; ``0`` keeps ``step_size``).

    **Mini-batches.** Pass each batch as the model's data, or use a subsampled plate. With
    batches passed as data, PCD's chains are kept while the batch shape stays the same
    (Tieleman's fantasy particles: not tied to data) and restart at the data when it
    changes. With ``pyro.plate(..., subsample_size=B)``, each datum keeps its own chains
    (:class:`~pyro_lvmle.samplers.ChainStore`), and the plate's ``N/B`` scale makes both
    phases estimates of the full-data sums. The loss is a sum over the batch, as Pyro's
    losses are: divide a per-datum learning rate by the batch size.

    **Cost.** The :class:`~pyro_lvmle.traces.Potential` is built once per model and data
    shape and reused for later batches of that shape (rebuilt every call under a subsampled
    plate, whose indices it fixes). With :class:`~pyro_lvmle.samplers.BlockGibbs`, a call on
    warm persistent chains runs the model once, for both phases (the data are read inside
    that run: :meth:`~pyro_lvmle.traces.Potential.log_joint` with ``at_data=True``); CD-k
    and chains still to start run it twice (the chains' start at the data, then both
    phases). Outside ``SVI``, ``differentiable_loss`` goes into a plain torch loop (as
    Pyro's ELBOs' does), which saves ``SVI``'s parameter capture and per-parameter
    optimizers; with ``jit_compile=True`` the step is one traced graph.
    ``benchmarks/ebm.py`` times each against hand-written torch loops.

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

    The same loss compiled, in a plain torch loop::

        >>> fast = lv.ContrastiveDivergence(persistent=True, jit_compile=True, sampler=BlockGibbs(
        ...     rbm.hidden_conditional, rbm.visible_conditional))
        >>> params = [pyro.param(name).unconstrained() for name in rbm.param_names]
        >>> optimizer = torch.optim.SGD(params, lr=1e-3)
        >>> for _ in range(3):
        ...     optimizer.zero_grad()
        ...     fast.differentiable_loss(rbm.model, lv.empty_guide, data).backward()
        ...     optimizer.step()
        >>> float(fast.diagnostics["accept_prob"])  # a Gibbs sweep is always accepted
        1.0
    """

    def __init__(self, num_steps: int = 1, persistent: bool = False, num_chains: int = 1,
                 sampler="auto", *, max_plate_nesting: int | None = None,
                 jit_compile: bool = False, **sampler_options):
        where = "ContrastiveDivergence"
        self.num_steps = check_int(where, "num_steps", num_steps, 1)
        self.num_chains = check_int(where, "num_chains", num_chains, 1)
        super().__init__(num_chains, num_chains, max_plate_nesting)
        self.persistent = check_bool(where, "persistent", persistent)
        self._options = {"track_rate": TRACK_RATE, **sampler_options}
        refuse_latent_kernels(where, sampler)
        if not (sampler == "auto" and not sampler_options):
            try:  # bad settings are refused here, not at the first step
                make_sampler("gibbs" if sampler == "auto" else sampler, **self._options)
            except (ValueError, TypeError) as error:
                raise type(error)(f"{where}: {error}") from None
        self.sampler = None if isinstance(sampler, str) else make_sampler(sampler)
        self._sampler_name = sampler if isinstance(sampler, str) else None
        self._potentials: dict = {}
        self.jit_compile = check_bool(where, "jit_compile", jit_compile)
        if self.jit_compile and not (self.persistent and isinstance(self.sampler, BlockGibbs)):
            raise ValueError(f"{where}: jit_compile=True compiles persistent chains moved by "
                             "BlockGibbs (its sweep has no Python branch on tensor values); "
                             "pass persistent=True and a BlockGibbs sampler, or leave "
                             "jit_compile off")
        self._compiled: dict = {}
        self._factors_checked = False

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
            return _view(cached, args, kwargs)
        vectorization = next(iter(self._potentials.values())).vectorization \
            if self._potentials else None
        with torch.enable_grad():
            try:  # the model's own faults, named for the loss that found them
                potential = Potential(model, args, kwargs,
                                      max_plate_nesting=self.max_plate_nesting,
                                      vectorization=vectorization, uncondition=True)
            except ValueError as error:
                raise ValueError(f"ContrastiveDivergence: {error}") from error
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
        potential, data, state, info = self._advance(model, args, kwargs)
        if data is None:
            data = potential.initial_position(1)
        return potential, torch.cat([data, state.position]), info

    def _advance(self, model, args, kwargs):
        """The target, the data's position (``None`` when the chains did not need it: warm
        persistent chains), the chains' state after ``num_steps`` transitions, their infos."""
        potential = self.potential(model, args, kwargs)
        sampler = self._sampler(potential)
        with torch.enable_grad():
            data = fresh = None
            if not (self.persistent and self.chains.ready(potential)):
                data = potential.initial_position(1)  # a run of the model
                fresh = data.expand(self.num_chains, -1)
                self.chains.allocate(potential, fresh)
                if not self.persistent:
                    self.chains.visited[""].fill_(False)
            position = self.chains.gather("position", potential, fresh=fresh)
            state = sampler.init(position, potential, like=self.chains.like(potential))
            state, info = run_steps(sampler, state, potential, self.num_steps)
            self.chains.save(potential, state)
        return potential, data, state, info

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
        try:
            log_density, accept = self._phases(model, args, kwargs)
        except ValueError as error:  # a distribution refusing a parameter: name the param
            bad = nonfinite_params(model, args, kwargs)
            if bad:
                raise ValueError(
                    f"ContrastiveDivergence: the parameters {bad} are not finite (NaN or "
                    "inf): an earlier step diverged; lower the learning rate, or restart "
                    f"from a saved state ({str(error).splitlines()[0][:200]})") from error
            raise
        positive, negative = log_density[0], log_density[1:].mean()
        if not torch.isfinite(log_density).all():
            raise ValueError(
                "ContrastiveDivergence: the log density is not finite at the data or at the "
                "chains' states; check the model's parameters and data")
        self.diagnostics = {"positive": positive.detach(), "negative": negative.detach(),
                            "accept_prob": accept, "num_steps": self.num_steps}
        return negative - positive


    def _phases(self, model, args, kwargs):
        """Move the chains; :math:`\\log\\tilde p` at the data then at each chain
        ``(1 + C,)`` and the mean acceptance probability."""
        if self.jit_compile:
            compiled = self._compiled_phases(model, args, kwargs)
            if compiled is not None:
                return compiled
        potential, data, state, info = self._advance(model, args, kwargs)
        if not self._factors_checked:
            self._factors_checked = warn_constant_factors(potential, data, state.position)
        if data is None:  # both phases from one run of the model, the data read in it
            log_density = potential.log_joint(state.position, at_data=True)
        else:
            log_density = potential.log_joint(torch.cat([data, state.position]))
        return log_density, info.accept_prob.mean()

    def _compiled_phases(self, model, args, kwargs):
        """:meth:`_phases` of warm persistent chains by a graph traced once per data shape
        (:func:`pyro.ops.jit.trace`: the parameters, the data and the chains' positions in,
        the log densities, new positions and acceptance out); ``None`` where it does not
        apply (chains to start, a subsampled plate, arguments other than tensors). The
        graph's first call, and its first call on other data than it was traced on, also
        run the model eagerly from the same random state and refuse a graph that disagrees
        (a model or conditionals branching on values)."""
        potential = self.potential(model, args, kwargs)
        key = _shape_key(args, kwargs)
        if (key is None or potential.batched_plates or not self.chains.ready(potential)
                or not all(torch.is_tensor(a) for a in args)
                or any(torch.is_tensor(v) for v in kwargs.values())):
            return None
        like = self.chains.like(potential)
        # checks: 0 before the graph's first call, 1 once checked on the data it was traced
        # on, 2 once checked on other data too (a model branching on the data's values is
        # caught only there)
        compiled, checks, traced = self._compiled.get(key, (None, 0, None))
        devices = [like.position.device] if like.position.is_cuda else []
        if compiled is None:
            traced = tuple(a.detach().clone() for a in args)
            compiled = pyro.ops.jit.trace(partial(_phases, self.sampler, self.num_steps,
                                                  potential), ignore_warnings=True)
            # traced off the random stream (tracing runs the step three times): a run
            # resumed from a state_dict, which traces anew, draws what the uninterrupted
            # run drew
            with torch.random.fork_rng(devices=devices):
                _call_traced(compiled, like.position, args, kwargs)
        same_data = checks != 1 or all(torch.equal(a, b)
                                       for a, b in zip(args, traced, strict=True))
        check = checks == 0 or (checks == 1 and not same_data)
        if check:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                expected = _phases(self.sampler, self.num_steps, potential, like.position,
                                   *args, **kwargs)
        out = _call_traced(compiled, like.position, args, kwargs)
        if check:
            checks = 1 if same_data else 2
            if not all(torch.allclose(a.detach(), b, rtol=1e-9, atol=1e-9)
                       for a, b in zip(out, expected, strict=True)):
                self._compiled = {}
                raise ValueError(
                    "ContrastiveDivergence: the compiled step disagrees with the model run "
                    "eagerly from the same random state: the model or the sampler's "
                    "conditionals branch on tensor values, which a traced graph fixes; leave "
                    "jit_compile off for this model")
        self._compiled = {key: (compiled, checks, traced)}  # one data shape at a time
        log_density, position, accept = out
        self.chains.save(potential, like._replace(position=position))
        return log_density, accept


def _call_traced(compiled, position, args, kwargs):
    with warnings.catch_warnings():  # torch >= 2.10 deprecates torch.jit.trace
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace` is deprecated",
                                DeprecationWarning)
        return compiled(position, *args, **kwargs)


def _phases(sampler, num_steps, potential, position, *args, **kwargs):
    """The traced step: ``num_steps`` transitions from ``position``, then the log densities
    at the data and at the chains from one run of the model on ``args``."""
    target = _view(potential, args, kwargs)
    state, info = run_steps(sampler, sampler.init(position, target), target, num_steps)
    position = state.position.detach()
    return target.log_joint(position, at_data=True), position, info.accept_prob.mean()


def _view(potential, args, kwargs):
    """The potential with other arguments of the same shapes (its layout kept)."""
    view = potential.__class__.__new__(potential.__class__)
    view.__dict__.update(potential.__dict__, args=tuple(args), kwargs=dict(kwargs))
    return view


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

