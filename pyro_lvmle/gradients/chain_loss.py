"""What every loss driven by Markov chains shares: the ``SVI`` plumbing around one
``differentiable_loss``, the persistent chains' store and their saved state.

:class:`~pyro_lvmle.MCMCGradient` (Fisher's identity: chains on the latents given the data)
and :class:`~pyro_lvmle.ContrastiveDivergence` (the negative phase: chains on the observed
sites) differ only in what they sample and what they differentiate; a subclass implements
``differentiable_loss``, and ``loss`` and ``loss_and_grads`` follow from it here.
"""

from __future__ import annotations

import torch
from pyro.infer import ELBO

from .._checks import check_int
from ..samplers import ChainStore
from ..traces.params import accumulate_grads, call_with_params

__all__ = ["ChainLoss"]

#: the batched kernels' step-size tracking after warm-up in the losses whose target drifts
#: with the parameters (:class:`~pyro_lvmle.samplers.BatchedKernel`'s ``track_rate``)
TRACK_RATE = 0.02


class ChainLoss(ELBO):
    """Base of the losses whose estimate comes from Markov chains kept between calls.

    :param int num_chains: chains (each a full copy of the sampled sites).
    :param int num_particles: what Pyro's :class:`~pyro.infer.ELBO` records as particles.
    :param int max_plate_nesting: the model's deepest plate nesting; guessed if ``None``.

    Subclasses implement ``differentiable_loss(model, guide, *args, **kwargs)``; the guide
    is ignored (pass :func:`~pyro_lvmle.empty_guide`).
    """

    def __init__(self, num_chains: int, num_particles: int, max_plate_nesting=None):
        where = type(self).__name__
        if max_plate_nesting is not None:
            check_int(where, "max_plate_nesting", max_plate_nesting, 0)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self._model = None
        self.diagnostics: dict = {}
        #: the chains kept between calls (per datum under subsampled plates)
        self.chains = ChainStore(num_chains)

    @property
    def max_plate_nesting(self):
        """The model's deepest plate nesting (``None`` until given or guessed)."""
        return self._max_plate_nesting

    @max_plate_nesting.setter
    def max_plate_nesting(self, value):
        self._max_plate_nesting = None if value in (None, float("inf")) else int(value)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss after advancing the chains, without building a parameter graph."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Advance the chains, add the loss's gradient to the parameters' ``.grad``, return
        the loss. A non-finite gradient raises and leaves every ``.grad`` as it was."""
        loss, params = call_with_params(self.differentiable_loss, model, guide, *args, **kwargs)
        bad = accumulate_grads(loss, params)
        if bad:
            raise ValueError(f"{type(self).__name__}: the gradient of parameters {bad} is not "
                             "finite; the parameters' gradients are left as they were")
        return loss.item()

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError(f"{type(self).__name__} draws no guide traces; it runs "
                                  "Markov chains")

    def state_dict(self) -> dict:
        """The chains (per datum under subsampling), step sizes, adaptation and which data
        have chains, tagged with the loss's class; tensors only, loadable with
        ``torch.load(weights_only=True)``."""
        return {**self.chains.state_dict(), "max_plate_nesting": self.max_plate_nesting,
                "loss_class": type(self).__name__}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s chains (a Pyro kernel gets its step sizes and diagonal
        masses back at the next call, without warming up again).

        :param dict state: as :meth:`state_dict` returned it.
        """
        where = type(self).__name__
        if not isinstance(state, dict) or "max_plate_nesting" not in state:
            raise ValueError(f"{where}.load_state_dict: not a saved {where} state (no "
                             "'max_plate_nesting', or no 'position' of chains); pass what "
                             "state_dict() returned")
        saved = state.get("loss_class", where)  # states saved before the tag load as before
        if saved != where:
            raise ValueError(f"{where}.load_state_dict: the state was saved by {saved}, whose "
                             f"chains target another distribution; load it into a {saved}")
        self.chains.load_state_dict(state)
        self.max_plate_nesting = state["max_plate_nesting"]
