"""EM-style drivers (MCEM, SAEM, variational EM, exact EM), their shared protocol and
``History``. Filled by the EM issue.
"""

__all__: list[str] = []
