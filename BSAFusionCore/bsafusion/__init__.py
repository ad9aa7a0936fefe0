"""BSAFusion core: single-stage registration and fusion of unaligned multimodal images.

Implements BSFA-F (*BSAFusion: A Bidirectional Stepwise Feature Alignment Network for
Unaligned Medical Image Fusion*, AAAI 2025). Field conventions are documented once, in
:mod:`bsafusion.deform`, and used everywhere.
"""

from bsafusion.errors import InputError

__all__ = ["InputError", "__version__"]
__version__ = "0.1.0"
