"""xmm-enhance: super-resolved and de-noised XMM-Newton EPIC-pn images on a CPU, without SAS."""

__version__ = "0.1.0"

__all__ = ["__version__"]
