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
gradient descent of Kuntz, Lim & Johansen (2023): an Euler discretization of a gradient
flow on parameters and particles jointly (their "PGD"), whose particles are unadjusted
Langevin chains.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro.infer import ELBO

from ..samplers import (
    BATCHED_STEPS,
    BatchedKernel,
    ChainStore,
    HMCState,
    PyroKernel,
    dual_averaging_init,
)
from ..traces import Potential
from ..traces.params import _cuda_devices
from ..traces.particles import guess_max_plate_nesting

__all__ = ["MCMCGradient", "empty_guide"]


def empty_guide(*args, **kwargs) -> None:
    """A guide with no sites, for losses that ignore the guide (:class:`MCMCGradient`).

    ``SVI(model, lv.empty_guide, optim, loss=lv.MCMCGradient())`` optimizes the model's
    parameters by maximum likelihood.

    :param args: ignored (the model's arguments).
    :param kwargs: ignored.
    """
    return None


class MCMCGradient(ELBO):
    r"""Maximum-likelihood gradients by Fisher's identity from persistent Markov chains.

    Each call advances ``num_chains`` chains on the model's latent sites given the data and
    the current parameters (``num_samples * thinning`` transitions, after ``warmup_steps``
    adapting ones when the chains are new), then returns (and, in ``loss_and_grads``,
    backpropagates) :math:`-\frac{1}{SC}\sum_{s,c} \log p(x, z_{cs}; \theta)` with the
    samples detached. Enumerable discrete latents (``config_enumerate``) are summed out.

    :param kernel: ``"nuts"`` (Pyro's NUTS, one kernel per chain, adaptation kept across
        calls), ``"hmc"`` (the batched HMC with ``num_steps`` leapfrog steps), ``"mala"``,
        ``"ula"`` (batched Langevin, unadjusted), a ``pyro.infer.HMC``/``NUTS`` kernel of the
        same model, a functional step such as :func:`~pyro_lvmle.samplers.hmc_step` (or a
        ``functools.partial`` of one), or a sampler object
        (:class:`~pyro_lvmle.samplers.BatchedKernel`, :class:`~pyro_lvmle.samplers.PyroKernel`).
    :param int num_samples: kept states per chain per call.
    :param int warmup_steps: adapting transitions when chains start (step size by dual
        averaging, diagonal mass in Stan's windows); ``0`` keeps ``step_size`` fixed.
    :param int num_chains: chains, all advanced at once by the batched kernels.
    :param bool persistent: keep the chains (and their adaptation) between calls; ``False``
        restarts them from the prior on every call, Monte Carlo EM style.
    :param int thinning: transitions between kept states.
    :param float step_size: the initial step size of the batched kernels.
    :param int num_steps: leapfrog steps per ``"hmc"`` transition (whose step size is
        jittered by a factor in [0.5, 1.5] per transition: a fixed trajectory length can be
        nearly periodic on near-Gaussian posteriors).
    :param float target_accept: the acceptance rate adaptation aims for (0.8 for HMC and
        NUTS, 0.574 for MALA by default; 0.9 for ULA, whose warm-up runs with the Metropolis
        correction and whose bias grows with the step).
    :param bool adapt_mass: adapt a diagonal mass matrix during warm-up.
    :param bool shared_step_size: one step size for all chains (batched kernels).
    :param int max_plate_nesting: the model's deepest plate nesting; guessed if ``None``.

    **Mini-batches.** When latent sites live in a subsampled :class:`~pyro.plate`, every
    datum keeps its own chain state (position and mass, full size, indexed by the plate's
    indices): a step moves only the chains of its batch, and a datum seen for the first time
    starts from the prior and is warmed up with its batch. The plate's ``N/B`` scale makes the
    gradient an unbiased estimate of the full-data one (given mixed chains).

    **Diagnostics** of the last call are in :attr:`diagnostics`: ``accept_prob`` (mean over
    the kept transitions and chains), ``num_divergent``, ``step_size`` (mean over chains),
    ``ess`` (the smallest effective sample size over coordinates of the samples used, by
    Pyro's estimator across chains; ``nan`` with fewer than 4 samples per chain),
    ``num_transitions`` and ``warmup`` (whether this call warmed chains up).

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
                 step_size: float = 0.1, num_steps: int = 10, target_accept: float | None = None,
                 adapt_mass: bool = True, shared_step_size: bool = False,
                 max_plate_nesting: int | None = None):
        for name, value, low in (("num_samples", num_samples, 1), ("num_chains", num_chains, 1),
                                 ("thinning", thinning, 1), ("warmup_steps", warmup_steps, 0),
                                 ("num_steps", num_steps, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"MCMCGradient: {name} must be an int >= {low}, got {value!r}")
        if not (isinstance(step_size, (int, float)) and step_size > 0):
            raise ValueError(f"MCMCGradient: step_size must be a positive float, got "
                             f"{step_size!r}")
        if target_accept is not None and not 0 < target_accept < 1:
            raise ValueError(f"MCMCGradient: target_accept must be in (0, 1), got "
                             f"{target_accept!r}")
        super().__init__()
        self.kernel = kernel
        self.num_samples = num_samples
        self.warmup_steps = warmup_steps
        self.num_chains = num_chains
        self.persistent = bool(persistent)
        self.thinning = thinning
        self.step_size = float(step_size)
        self.num_steps = num_steps
        self.target_accept = target_accept
        self.adapt_mass = bool(adapt_mass)
        self.shared_step_size = bool(shared_step_size)
        self._max_plate_nesting = max_plate_nesting
        self.sampler = self._resolve_kernel(kernel) if not isinstance(kernel, str) \
            or kernel != "nuts" else None
        self._model = None
        self._ready = False  # whether the sampler was set up in this process
        self.diagnostics: dict = {}
        self.samples: dict[str, torch.Tensor] = {}
        #: the chains kept between calls (per datum under subsampled plates)
        self.chains = ChainStore(num_chains)

    def __repr__(self) -> str:
        return (f"MCMCGradient(kernel={self.kernel!r}, num_samples={self.num_samples}, "
                f"warmup_steps={self.warmup_steps}, num_chains={self.num_chains}, "
                f"persistent={self.persistent}, thinning={self.thinning})")

    # ----------------------------------------------------------------------------- kernels
    def _resolve_kernel(self, kernel, model=None):
        from pyro.infer.mcmc import HMC, NUTS

        kwargs = dict(step_size=self.step_size, adapt_step_size=self.warmup_steps > 0,
                      adapt_mass=self.adapt_mass, shared_step_size=self.shared_step_size)
        if isinstance(kernel, str):
            if kernel == "nuts":
                return PyroKernel(NUTS(model, max_plate_nesting=self._max_plate_nesting,
                                       target_accept_prob=self.target_accept or 0.8))
            if kernel not in BATCHED_STEPS:
                raise ValueError(f"MCMCGradient: unknown kernel {kernel!r}; use 'nuts', "
                                 f"{', '.join(repr(k) for k in BATCHED_STEPS)}, a Pyro HMC/NUTS "
                                 "kernel, or a sampler")
            step_kwargs = {"num_steps": self.num_steps, "jitter": 0.5} if kernel == "hmc" \
                else {}
            if self.target_accept is not None or kernel == "ula":
                step_kwargs["target_accept"] = self.target_accept or 0.9
            return BatchedKernel(BATCHED_STEPS[kernel], **kwargs, **step_kwargs)
        if isinstance(kernel, HMC):
            return PyroKernel(kernel)
        if all(hasattr(kernel, m) for m in ("init", "refresh", "warmup", "step")):
            return kernel
        if callable(kernel):
            return BatchedKernel(kernel, **kwargs)
        raise TypeError(f"MCMCGradient: kernel must be a name, a Pyro HMC/NUTS kernel, a step "
                        f"function or a sampler, got {type(kernel).__name__}")

    def _setup(self, model, args, kwargs) -> Potential:
        if self._model is not None and model != self._model:  # bound methods: ==
            raise ValueError("MCMCGradient: these chains belong to another model; use one "
                             "MCMCGradient per model")
        self._model = model
        if self._max_plate_nesting is None:
            self._max_plate_nesting = guess_max_plate_nesting(model, empty_guide, args, kwargs)
        if self.sampler is None:  # "nuts" needs the model
            self.sampler = self._resolve_kernel(self.kernel, model)
        return Potential(model, args, kwargs, max_plate_nesting=self._max_plate_nesting)

    # --------------------------------------------------------------------------- sampling
    def advance(self, model, *args, **kwargs) -> tuple[Potential, torch.Tensor]:
        """Advance the chains for the model's current parameters and data, as a call of the
        loss does, and return the potential and the kept positions ``(S * C, D)``.

        :param model: the Pyro model.
        :param args: its arguments.
        :param kwargs: its keyword arguments.
        """
        potential = self._setup(model, args, kwargs)
        store = self.chains
        if not self.persistent:
            store.reset()
            self._ready = False
        prior = potential.sample_prior(self.num_chains)
        store.allocate(potential, prior)
        warm = store.all_seen(potential)
        position = store.gather("position", potential, fresh=prior)
        sampler = self.sampler
        pyro_kernel = isinstance(sampler, PyroKernel)
        if not self._ready:
            restored = store.step_size is not None and warm  # loaded from a state_dict
            if restored:  # Pyro's set-up looks for a step size with random draws: not now
                with torch.random.fork_rng(devices=_cuda_devices()):
                    state = sampler.init(position, potential, 0)
            else:
                state = sampler.init(position, potential, self.warmup_steps)
            self._ready = True
            if restored:
                state = state._replace(step_size=store.step_size, adaptation=store.adaptation,
                                       inverse_mass=store.gather("inverse_mass", potential))
                if pyro_kernel and not sampler.restore(state, potential):
                    # a dense mass is not in the state: set up again and re-adapt
                    state = sampler.init(position, potential, self.warmup_steps)
                    warm = False
        else:
            nan = position.new_full((self.num_chains,), math.nan)
            state = HMCState(position, nan, torch.full_like(position, math.nan),
                             store.step_size, store.gather("inverse_mass", potential),
                             store.adaptation)
            state = sampler.refresh(state, potential)
        if not warm and self.warmup_steps > 0:
            state = state._replace(adaptation=dual_averaging_init(state.step_size))
            state, _ = sampler.warmup(state, potential, self.warmup_steps)
        kept, infos = [], []
        for _ in range(self.num_samples):
            for _ in range(self.thinning):
                state, info = sampler.step(state, potential)
                infos.append(info)
            kept.append(state.position)
        store.save(potential, state)
        draws = torch.stack(kept, 1)  # (C, S, D)
        self.diagnostics = _diagnostics(infos, draws, state, warmed=not warm)
        samples = draws.reshape(-1, potential.dim)
        self.samples = {site.name: value.reshape((samples.shape[0],) + site.shape)
                        for site, value in zip(potential.sites,
                                               potential.unpack(samples).values(), strict=False)}
        return potential, samples

    def sample(self, model, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Advance the chains and return the kept latent values, ``(S * C, *site shape)``
        per site (constrained), as the next gradient would use them.

        :param model: the Pyro model.
        :param args: its arguments.
        :param kwargs: its keyword arguments.
        """
        self.advance(model, *args, **kwargs)
        return dict(self.samples)

    # ------------------------------------------------------------------------------ ELBO
    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        r""":math:`-\frac{1}{SC}\sum_{s,c}\log p(x, z_{cs}; \theta)` after advancing the chains;
        differentiable in the model's parameters (the samples are fixed).

        :param model: the Pyro model.
        :param guide: ignored (pass :func:`empty_guide`).
        :param args: the model's arguments.
        :param kwargs: the model's keyword arguments.
        """
        potential, samples = self.advance(model, *args, **kwargs)
        log_joint = potential.log_joint(samples)
        if not torch.isfinite(log_joint).all():
            raise ValueError(
                "MCMCGradient: log p(x, z) is not finite at the chains' states; check the "
                "model's parameters (a scale at 0, a probability at 0 or 1) and data"
            )
        return -log_joint.mean()

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss after advancing the chains, without building a parameter graph.

        :param model: the Pyro model.
        :param guide: ignored.
        """
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Advance the chains, backpropagate the loss into the parameters, return the loss.

        :param model: the Pyro model.
        :param guide: ignored.
        """
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        # named_parameters reads the store without pyro.param, which SVI would record
        for name, leaf in pyro.get_param_store().named_parameters():
            grad = leaf.grad
            if grad is not None and not torch.isfinite(grad).all():
                raise ValueError(f"MCMCGradient: the gradient of parameter {name!r} is not "
                                 "finite")
        return loss.item()

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("MCMCGradient draws no guide traces; it runs Markov chains")

    # ------------------------------------------------------------------ state (resumable)
    def state_dict(self) -> dict:
        """The chains (per datum under subsampling), step sizes, adaptation and which data
        have chains; tensors only, loadable with ``torch.load(weights_only=True)``. Pyro
        kernels' step sizes and diagonal masses are included (a dense mass is not: such a
        kernel warms up again after loading)."""
        return {**self.chains.state_dict(), "max_plate_nesting": self._max_plate_nesting}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s chains.

        :param dict state: as :meth:`state_dict` returned it.
        """
        self.chains.load_state_dict(state)
        self._max_plate_nesting = state["max_plate_nesting"]
        self._ready = False


def _diagnostics(infos, draws, state, warmed):
    accept = torch.stack([i.accept_prob for i in infos])
    divergent = torch.stack([i.divergent for i in infos])
    ess = math.nan
    if draws.shape[1] >= 4:
        from pyro.ops.stats import effective_sample_size

        values = effective_sample_size(draws, chain_dim=0, sample_dim=1)
        values = values[torch.isfinite(values)]
        ess = values.min().item() if values.numel() else math.nan
    return {"accept_prob": accept.mean().item(), "num_divergent": int(divergent.sum()),
            "step_size": state.step_size.mean().item(), "ess": ess,
            "num_transitions": len(infos), "warmup": warmed}

