"""Objectives for ``pyro.infer.SVI``: importance-weighted bounds (IWAE, DReG, VIMCO), STL,
Renyi, TVO and reweighted wake-sleep, each a small function of trace-layer outputs.
Filled by the objectives issue.
"""

__all__: list[str] = []
