"""The BSFA-F network, one module per block of the paper."""

from bsafusion.model.config import ABLATIONS, ModelConfig
from bsafusion.model.network import BSFAF, BSFAFOutput, Inference, Registration

__all__ = ["ABLATIONS", "BSFAF", "BSFAFOutput", "Inference", "ModelConfig", "Registration"]
