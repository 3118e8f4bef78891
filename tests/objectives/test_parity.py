"""Validation parity with Pyro: where ``Trace_ELBO`` raises or warns on a model/guide pair,
every objective here raises or warns too, with a message that names the site.

Each case of the table is a mistake as users make it. Pyro's verdict is computed, not
assumed, so a case where Pyro is silent asks nothing of us.
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

import pyro_lvmle as lv

DATA = torch.tensor([0.5, -1.0, 2.0])


def model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    loc = pyro.param("q_loc", lambda: torch.zeros(len(x)))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, 1.0))


def guide_with_own_plate(x):  # the guide's plate has a name the model never uses
    loc = pyro.param("q_loc", lambda: torch.zeros(len(x)))
    with pyro.plate("datum", len(x)):
        pyro.sample("z", dist.Normal(loc, 1.0))


def model_with_unmarked_discrete(x):  # "c" is in the model only: drawn from the prior
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Bernoulli(0.3))
        z = pyro.sample("z", dist.Normal(2.0 * c, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def model_with_marked_discrete(x, how="parallel"):  # "c" marked for enumeration, not guided
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Bernoulli(0.3), infer={"enumerate": how})
        z = pyro.sample("z", dist.Normal(2.0 * c, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide_with_extra_site(x):
    guide(x)
    pyro.sample("extra", dist.Normal(0.0, 1.0))


def guide_with_event_dim(x):
    loc = pyro.param("q_loc", lambda: torch.zeros(len(x), 1))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


def guide_with_wrong_size(x):
    loc = pyro.param("q_loc", lambda: torch.zeros(len(x) + 1))
    with pyro.plate("data", len(x) + 1):
        pyro.sample("z", dist.Normal(loc, 1.0))


def model_without_plate(x):  # batch shape (3,) outside any plate
    z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0))
    pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def guide_without_plate(x):
    loc = pyro.param("q_loc", lambda: torch.zeros(len(x)))
    pyro.sample("z", dist.Normal(loc, 1.0))


def guide_with_factor(x):
    guide(x)
    pyro.factor("penalty", torch.tensor(0.0))


def model_with_inf_factor(x):
    model(x)
    pyro.factor("boost", torch.tensor(float("inf")))


def guide_with_scalar_latent(x):
    loc = pyro.param("q_loc", lambda: torch.zeros(len(x)))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, 1.0))
    pyro.sample("c", dist.Bernoulli(0.5))


CASES = {
    # name: (model, guide, data, the site the message must name)
    "plate in guide but not in model": (model, guide_with_own_plate, DATA, "datum"),
    "NaN in the data": (model, guide, torch.tensor([0.5, float("nan"), 2.0]), "'x'"),
    "model site not in guide": (model_with_unmarked_discrete, guide, DATA, "c"),
    "model site marked for enumeration not in guide": (model_with_marked_discrete, guide, DATA,
                                                       "c"),
    "sequential enumeration in the model": (
        lambda x: model_with_marked_discrete(x, "sequential"), guide, DATA, "c"),
    "guide site not in model": (model, guide_with_extra_site, DATA, "extra"),
    "event dims disagree": (model, guide_with_event_dim, DATA, "z"),
    "plate sizes disagree": (model, guide_with_wrong_size, DATA, "z"),
    "batch shape outside the plates": (model_without_plate, guide_without_plate, DATA, "z"),
    "factor in guide without has_rsample": (model, guide_with_factor, DATA, "penalty"),
    "infinite factor": (model_with_inf_factor, guide, DATA, "boost"),
}

OBJECTIVES = {
    "iwae-auto": lambda: lv.TraceIWAE_ELBO(3),
    "iwae-vimco": lambda: lv.TraceIWAE_ELBO(3, "vimco"),
    "stl": lambda: lv.TraceSTL_ELBO(1),
    "renyi": lambda: lv.TraceRenyi_ELBO(0.5, 3),
    "tvo": lambda: lv.TraceTVO_ELBO(3, 2),
    "rws": lambda: lv.TraceRWS_ELBO(3),
}


def verdict(loss, model, guide, data):
    """``("raise", message)``, ``("warn", messages)`` or ``("ok", "")`` for one step."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loss.loss_and_grads(model, guide, data)
        except Exception as error:  # noqa: BLE001 - the verdict records any exception
            return "raise", f"{type(error).__name__}: {error}"
    messages = [str(w.message) for w in caught
                if not issubclass(w.category, (DeprecationWarning, FutureWarning))]
    return ("warn", "\n".join(messages)) if messages else ("ok", "")


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("case", list(CASES))
def test_we_raise_or_warn_where_pyro_does(case, objective):
    model, guide, data, site = CASES[case]
    pyros, pyros_message = verdict(Trace_ELBO(), model, guide, data)
    ours, message = verdict(OBJECTIVES[objective](), model, guide, data)
    if pyros == "raise":
        assert ours == "raise", f"Pyro raised ({pyros_message}); we said {ours}: {message}"
    elif pyros == "warn":
        assert ours in ("raise", "warn"), f"Pyro warned ({pyros_message}); we were silent"
    else:
        return
    assert site in message, f"the message does not name {site}: {message}"


def test_the_table_is_not_vacuous():
    # every case is one Pyro complains about (otherwise it tests nothing)
    for case, (model, guide, data, _) in CASES.items():
        assert verdict(Trace_ELBO(), model, guide, data)[0] != "ok", case
