"""The binarized-digits VAE shared by the objectives benchmark and the VAE example."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


def load_binarized_digits(seed=0):
    """sklearn's 8x8 digits, pixels / 16 binarized at 0.5, split 1500 train / 297 test."""
    from sklearn.datasets import load_digits

    data = torch.tensor(load_digits().data, dtype=torch.get_default_dtype()) / 16.0
    data = (data > 0.5).to(torch.get_default_dtype())
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data[perm[:1500]], data[perm[1500:]]


class VAE(nn.Module):
    """Bernoulli decoder, Gaussian encoder, one hidden layer each."""

    def __init__(self, data_dim=64, latent_dim=10, hidden_dim=200):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden_dim), nn.Tanh(),
                                     nn.Linear(hidden_dim, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.Tanh(),
                                     nn.Linear(hidden_dim, data_dim))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        prior = dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw_scale = self.encoder(x).chunk(2, -1)
            scale = nn.functional.softplus(raw_scale) + 1e-4
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def iwae_loss_by_hand(self, x, num_particles):
        """The same importance-weighted bound written directly in torch (the baseline)."""
        loc, raw_scale = self.encoder(x).chunk(2, -1)
        scale = nn.functional.softplus(raw_scale) + 1e-4
        z = loc + scale * torch.randn((num_particles,) + loc.shape, dtype=loc.dtype)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        logits = self.decoder(z)
        log_lik = -nn.functional.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum(-1)
        log_w = log_prior + log_lik - log_q
        bound = torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(num_particles)))
        return -bound.sum()
