"""Gradient estimators that are not bounds: ``MCMCGradient`` (Fisher's identity) and
``ContrastiveDivergence`` (positive minus negative phase). Filled by later issues.
"""

__all__: list[str] = []
