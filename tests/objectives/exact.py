"""Small models whose objectives' expected gradients are computed exactly.

``bernoulli``: one binary latent per datum and a Bernoulli guide; expectations over the K
particles are sums over all 2**K configurations. ``gaussian``: LinearGaussian (D = 1) with a
Normal guide; expectations over K particles are K-dimensional Gauss-Hermite sums, exact to
quadrature precision. Both give the exact gradient of E[objective] by autograd, computed here
independently of the package's objectives.
"""

import contextlib
import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from pyro_lvmle.models import LinearGaussian

BERNOULLI_DATA = torch.tensor([0.4, 2.1], dtype=torch.float64)
GAUSSIAN_DATA = torch.tensor([[0.9], [-0.4], [2.2]], dtype=torch.float64)


def bernoulli_model(x):
    prior_logit = pyro.param("prior_logit", torch.tensor(0.3))
    loc = pyro.param("loc", torch.tensor(1.5))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(logits=prior_logit))
        pyro.sample("x", dist.Normal(loc * z, 1.0), obs=x)


def bernoulli_guide(x):
    logits = pyro.param("q_logits", torch.tensor([-0.4, 0.8]))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(logits=logits))


GAUSSIAN_MODEL = LinearGaussian(dim=1, init_params={"w": [0.3], "sigma": 0.7})


def gaussian_guide(x, subsample_size=None):
    loc = pyro.param("q_loc", lambda: torch.tensor([0.5, -0.2, 1.1]))
    scale = pyro.param("q_scale", lambda: torch.tensor([0.9, 0.5, 0.7]),
                       constraint=constraints.positive)
    with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
        pyro.sample("z", dist.Normal(loc[idx, None], scale[idx, None]).to_event(1))


def leaves():
    """The unconstrained leaves of the param store, by name."""
    store = pyro.get_param_store()
    return {name: store.get_param(name).unconstrained() for name in store.keys()}


def iwae(log_w):
    """log (1/K) sum_k w_k over the last dimension."""
    return torch.logsumexp(log_w, -1) - math.log(log_w.shape[-1])


def renyi(alpha):
    def f(log_w):
        return iwae((1 - alpha) * log_w) / (1 - alpha)
    return f


def elbo(log_w):
    return log_w.mean(-1)


def bernoulli_expected(f, num_particles, weight_fn=None):
    """Exact E[f(log w_1..K)] summed over data, by enumerating the 2**K configurations.

    With ``weight_fn``, returns instead E[sum_k weight_fn(log w)_k log q(z_k)] with the weights
    and the configuration probabilities held fixed (the expectation of wake-phi's surrogate).
    """
    p = {n: pyro.param(n) for n in ("prior_logit", "loc", "q_logits")}
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=num_particles)))
    total = 0.0
    for n, x in enumerate(BERNOULLI_DATA):
        prior = dist.Bernoulli(logits=p["prior_logit"])
        q = dist.Bernoulli(logits=p["q_logits"][n])
        log_w = prior.log_prob(configs) + dist.Normal(p["loc"] * configs, 1.0).log_prob(x) \
            - q.log_prob(configs)
        prob = q.log_prob(configs).sum(-1).exp()
        if weight_fn is None:
            total = total + (prob * f(log_w)).sum()
        else:
            w = weight_fn(log_w.detach())
            total = total + (prob.detach() * (w * q.log_prob(configs)).sum(-1)).sum()
    return total


def gaussian_expected(f, num_particles, num_nodes=40):
    """Exact (to quadrature precision) E[f(log w_1..K)] summed over data, for the Normal guide."""
    model_p = GAUSSIAN_MODEL.params()
    loc, scale = pyro.param("q_loc"), pyro.param("q_scale")
    nodes, weights = np.polynomial.hermite.hermgauss(num_nodes)
    grid = torch.tensor(list(itertools.product(nodes, repeat=num_particles)))  # (J, K)
    log_weight = torch.tensor(np.log(weights))[
        torch.tensor(list(itertools.product(range(num_nodes), repeat=num_particles)))
    ].sum(-1) - 0.5 * num_particles * math.log(math.pi)
    total = 0.0
    for n in range(len(GAUSSIAN_DATA)):
        z = loc[n] + scale[n] * math.sqrt(2.0) * grid
        log_w = dist.Normal(model_p["w"], 1.0).log_prob(z) \
            + dist.Normal(z, model_p["sigma"]).log_prob(GAUSSIAN_DATA[n]) \
            - dist.Normal(loc[n], scale[n]).log_prob(z)
        total = total + (log_weight.exp() * f(log_w)).sum()
    return total


def exact_gradient(expected):
    """The gradient of a scalar expectation with respect to every param-store leaf."""
    params = leaves()
    grads = torch.autograd.grad(expected, list(params.values()), allow_unused=True)
    return {n: (torch.zeros_like(params[n]) if g is None else g)
            for n, g in zip(params, grads, strict=True)}


# --- exact expectations of an estimator: its own draws enumerated, or on a quadrature grid ---

@contextlib.contextmanager
def fixed_draws(normal=None, bernoulli=None):
    """Make the programs' draws given values: ``Normal.rsample``'s standard normal noise is
    ``normal[k]`` for particle ``k`` (the same for every datum), ``Bernoulli.sample`` returns
    ``bernoulli`` reshaped to the draw. With the estimator's randomness fixed this way, the sum
    over a grid of draws, weighted by their probabilities, is the estimator's exact expectation.
    """
    import torch.distributions.normal as normal_module

    old_normal, old_bernoulli = normal_module._standard_normal, torch.bernoulli

    # a draw of another layout (the objectives' one unvectorized validation run, whose values
    # are discarded) gets zeros
    def standard_normal(shape, dtype, device):
        values = torch.as_tensor(normal, dtype=dtype, device=device)
        if values.numel() == 1:
            return values.reshape(()).expand(shape)
        if len(shape) == 0 or shape[0] != values.numel():
            return torch.zeros(shape, dtype=dtype, device=device)
        return values.reshape((-1,) + (1,) * (len(shape) - 1)).expand(shape)

    def bernoulli_draw(probs, *args, **kwargs):
        values = torch.as_tensor(bernoulli, dtype=probs.dtype)
        if values.numel() != probs.numel():
            return torch.zeros_like(probs)
        return values.reshape(probs.shape)

    if normal is not None:
        normal_module._standard_normal = standard_normal
    if bernoulli is not None:
        torch.bernoulli = bernoulli_draw
    try:
        yield
    finally:
        normal_module._standard_normal, torch.bernoulli = old_normal, old_bernoulli


def mean_gradient(loss, model, guide, args, draws):
    """``sum_j p_j * grad(bound)`` over ``draws = [(p_j, fixed_draws(...)), ...]``, by
    parameter name: the exact expected gradient when the draws enumerate the estimator's
    randomness."""
    params = leaves()
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for prob, context in draws:
        with context:
            value = -loss.differentiable_loss(model, guide, *args)
        grads = torch.autograd.grad(value, list(params.values()), allow_unused=True)
        for name, grad in zip(params, grads, strict=True):
            if grad is not None:
                total[name] = total[name] + prob * grad
    return total


def bernoulli_draws(q_logits, num_particles):
    """Every configuration of ``num_particles`` x ``len(q_logits)`` binary draws, with its
    probability under the guide's ``Bernoulli(logits=q_logits)``."""
    num_data = len(q_logits)
    q = dist.Bernoulli(logits=q_logits.detach())
    draws = []
    for bits in itertools.product([0.0, 1.0], repeat=num_particles * num_data):
        config = torch.tensor(bits).reshape(num_particles, num_data)
        prob = q.log_prob(config).sum().exp()
        draws.append((prob, fixed_draws(bernoulli=config)))
    return draws


def normal_draws(num_particles, num_nodes):
    """A Gauss-Hermite grid over the standard normal noise of ``num_particles`` particles
    (shared by the data, which is exact for estimators that are sums over independent data)."""
    nodes, weights = np.polynomial.hermite.hermgauss(num_nodes)
    draws = []
    for index in itertools.product(range(num_nodes), repeat=num_particles):
        prob = math.prod(weights[i] for i in index) / math.pi ** (num_particles / 2)
        eps = [math.sqrt(2.0) * nodes[i] for i in index]
        draws.append((prob, fixed_draws(normal=eps)))
    return draws
