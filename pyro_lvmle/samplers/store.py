"""Chains kept between calls, one per datum under subsampled plates.

A persistent estimator (the MCMC gradient, stochastic-approximation EM, persistent
contrastive divergence) moves its chains a few transitions per optimization step. When the
latent sites live in a mini-batched :class:`~pyro.plate`, each step sees another batch, so the
state is stored at full size (every datum's position and mass, per chain) and a step gathers
its batch's rows and scatters them back: a datum outside the batch keeps its chain untouched.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_int
from .base import ChainState, DualAveraging

__all__ = ["ChainStore"]


class ChainStore:
    """Per-site, full-size storage of ``num_chains`` chains of a
    :class:`~pyro_lvmle.traces.Potential`'s latent sites, with the step sizes and adaptation.

    :param int num_chains: chains per datum.

    Positions and inverse masses are kept per site in the potential's batched layout with the
    chain dimension first and each plate at its full size; :attr:`step_size` and
    :attr:`adaptation` are per chain. A datum whose chains never ran is *unseen*:
    :meth:`gather` fills its rows with fresh values.
    """

    def __init__(self, num_chains: int):
        self.num_chains = check_int("ChainStore", "num_chains", num_chains, 1)
        self.reset()

    def reset(self) -> None:
        """Forget every chain."""
        self.position: dict[str, torch.Tensor] = {}
        self.inverse_mass: dict[str, torch.Tensor] = {}
        self.visited: dict[str, torch.Tensor] = {}
        self.step_size: torch.Tensor | None = None
        self.adaptation: DualAveraging | None = None

    def allocate(self, potential, like: torch.Tensor) -> None:
        """Make room for the potential's sites (unseen, unit mass) if not done yet.

        :param potential: the current :class:`~pyro_lvmle.traces.Potential`.
        :param torch.Tensor like: gives the dtype and device.
        :raises ValueError: for a latent site outside a strictly subsampled plate (its
            posterior needs all the data), or in two subsampled plates.
        """
        batched = potential.batched_plates
        if any(self.position[site.name].shape != self._full_shape(site)
               for site in potential.sites if site.name in self.position):
            self.reset()  # other data (a larger data set): these chains belong to none of it
        for site in potential.sites:
            if batched and not {p for p, _, _ in site.subsampled} & batched:
                raise ValueError(
                    f"latent site {site.name!r} is outside the subsampled plate "
                    f"{sorted(batched)}: its posterior depends on all the data, which a "
                    "mini-batch does not give; make it a pyro.param or use full batches"
                )
            if len({p for p, _, _ in site.subsampled} & batched) > 1:
                raise ValueError(f"latent site {site.name!r} lies in more than one subsampled "
                                 "plate; subsample one of its plates at a time")
            if site.name in self.position:
                continue
            shape = self._full_shape(site)
            for plate, _, full_size in site.subsampled:
                self.visited.setdefault(plate, torch.zeros(full_size, dtype=torch.bool,
                                                           device=like.device))
            self.position[site.name] = like.new_zeros(shape)
            self.inverse_mass[site.name] = like.new_ones(shape)
        self.visited.setdefault("", torch.zeros(1, dtype=torch.bool, device=like.device))

    def _full_shape(self, site) -> torch.Size:
        shape = [self.num_chains] + list(site.batched_shape[1:])
        for _, axis, full_size in site.subsampled:
            shape[axis] = full_size
        return torch.Size(shape)

    def like(self, potential) -> ChainState | None:
        """The kept adaptation (step sizes, the batch's inverse masses) as a state for a
        sampler's ``init(..., like=)``; ``None`` before any chain ran. Its energies are
        ``nan``: the sampler recomputes them.

        :param potential: the current potential.
        """
        if self.step_size is None:
            return None
        position = self.gather("position", potential)
        nan = position.new_full((self.num_chains,), math.nan)
        return ChainState(position, nan, torch.full_like(position, math.nan), self.step_size,
                          self.gather("inverse_mass", potential), self.adaptation)

    def advance(self, sampler, potential, *, num_samples: int, thinning: int = 1,
                warmup_steps: int = 0):
        """Move the batch's chains: start unseen ones from the prior, warm the chains up if
        any is new, then keep ``num_samples`` states ``thinning`` transitions apart, and save
        the chains back. Only the :class:`~pyro_lvmle.samplers.Sampler` protocol is used.

        :param sampler: the sampler.
        :param potential: the current target (a :class:`~pyro_lvmle.traces.Potential`).
        :param int num_samples: kept states per chain.
        :param int thinning: transitions between kept states.
        :param int warmup_steps: adapting transitions when some chain is new.
        :returns: the kept positions ``(C, S, D)``, every transition's
            :class:`~pyro_lvmle.samplers.StepInfo`, the final state, and whether the chains
            were warmed up.
        """
        prior = potential.sample_prior(self.num_chains)
        self.allocate(potential, prior)
        warm = self.all_seen(potential)
        position = self.gather("position", potential, fresh=prior)
        state = sampler.init(position, potential, like=self.like(potential))
        if not warm and warmup_steps > 0:
            state, _ = sampler.warmup(state, potential, warmup_steps)
        kept, infos = [], []
        for _ in range(num_samples):
            for _ in range(thinning):
                state, info = sampler.step(state, potential)
                infos.append(info)
            kept.append(state.position)
        self.save(potential, state)
        return torch.stack(kept, 1), infos, state, not warm

    def ready(self, potential) -> bool:
        """Whether the store holds chains of the potential's sites at their full shapes and
        every chain of its batch has run: :meth:`gather` needs no fresh values.

        :param potential: the current potential.
        """
        return all(site.name in self.position
                   and self.position[site.name].shape == self._full_shape(site)
                   for site in potential.sites) and self.all_seen(potential)

    def all_seen(self, potential) -> bool:
        """Whether every chain of the potential's batch has run before.

        :param potential: the current potential.
        """
        if not self.visited[""].all():
            return False
        return all(bool(self.visited[p][self._indices(potential, p)].all())
                   for p in _plates(potential))

    def gather(self, which: str, potential, fresh: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's flat ``(C, D)`` values of ``"position"`` or ``"inverse_mass"``.

        :param str which: ``"position"`` or ``"inverse_mass"``.
        :param potential: the current potential.
        :param torch.Tensor fresh: ``(C, D)`` values for the rows of unseen data.
        """
        store = getattr(self, which)
        parts = []
        for site in potential.sites:
            value = store[site.name]
            for plate, axis, _ in site.subsampled:
                value = value.index_select(axis, self._indices(potential, plate))
            if fresh is not None:
                new = fresh[:, site.offset:site.offset + site.numel].reshape(value.shape)
                value = torch.where(self._seen(potential, site), value, new)
            parts.append(value.reshape(self.num_chains, -1))
        return torch.cat(parts, -1)

    def save(self, potential, state: ChainState) -> None:
        """Scatter the batch's positions and masses back, keep the step sizes and
        adaptation, and mark the batch seen.

        :param potential: the current potential.
        :param ChainState state: the chains after this call's transitions.
        """
        for which, flat in (("position", state.position),
                            ("inverse_mass", state.inverse_mass)):
            store = getattr(self, which)
            for site in potential.sites:
                full = store[site.name]
                value = flat[:, site.offset:site.offset + site.numel]
                active = [(p, a) for p, a, _ in site.subsampled if p in potential.batched_plates]
                if not active:  # the batch covers every datum
                    store[site.name] = value.reshape(full.shape).clone()
                    continue
                ((plate, axis),) = active
                index = self._indices(potential, plate)
                shape = list(full.shape)
                shape[axis] = index.numel()
                store[site.name] = full.index_copy(axis, index, value.reshape(shape))
        self.step_size, self.adaptation = state.step_size, state.adaptation
        self.visited[""].fill_(True)
        for plate in _plates(potential):
            self.visited[plate][self._indices(potential, plate)] = True

    def state_dict(self) -> dict:
        """Tensors only (loadable with ``torch.load(weights_only=True)``), copied: the chains'
        flags are updated in place, and a state kept in memory must not follow the run."""
        adaptation = None if self.adaptation is None else self.adaptation._asdict()
        return _copied({"position": self.position, "inverse_mass": self.inverse_mass,
                        "visited": self.visited, "step_size": self.step_size,
                        "adaptation": adaptation})

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s chains.

        :param dict state: as :meth:`state_dict` returned it.
        """
        missing = sorted(set(_STATE_KEYS) - set(state)) if isinstance(state, dict) else None
        if missing is None or missing:
            raise ValueError(f"ChainStore.load_state_dict: not a saved chain state (missing "
                             f"{missing if missing else _STATE_KEYS}); pass what state_dict() "
                             "returned")
        positions = state["position"]
        if not isinstance(positions, dict) or any(
                not torch.is_tensor(v) or v.dim() < 1 or v.shape[0] != self.num_chains
                for v in positions.values()):
            raise ValueError(f"ChainStore.load_state_dict: the saved positions are not "
                             f"{self.num_chains} chains' tensors; the state was saved with "
                             "another num_chains or is corrupted")
        self.reset()
        state = _copied(state)  # the run must not write into the caller's tensors
        self.position = state["position"]
        self.inverse_mass = state["inverse_mass"]
        self.visited = state["visited"]
        self.step_size = state["step_size"]
        self.adaptation = None if state["adaptation"] is None \
            else DualAveraging(**state["adaptation"])

    def _indices(self, potential, plate):
        return potential.subsample_indices[plate].to(self.visited[plate].device)

    def _seen(self, potential, site) -> torch.Tensor:
        """Flags of chains that already ran, broadcastable to the site's batch values."""
        seen = self.visited[""]
        for plate, axis, _ in site.subsampled:
            shape = [1] * len(site.batched_shape)
            shape[axis] = -1
            seen = seen & self.visited[plate][self._indices(potential, plate)].reshape(shape)
        return seen


def _copied(state):
    """Nested dicts of tensors, every tensor cloned."""
    if isinstance(state, dict):
        return {key: _copied(value) for key, value in state.items()}
    return state.clone() if torch.is_tensor(state) else state


_STATE_KEYS = ("position", "inverse_mass", "visited", "step_size", "adaptation")


def _plates(potential):
    return {plate for site in potential.sites for plate, _, _ in site.subsampled}
