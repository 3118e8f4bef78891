"""Evidence estimators: ``log_marginal`` by exact enumeration, importance sampling and
annealed importance sampling. Filled by a later issue; the reference models already
carry their exact log marginals.
"""

__all__: list[str] = []
