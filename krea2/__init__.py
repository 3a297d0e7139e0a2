"""Krea 2 Studio's engine: checkpoints, requests, loading and the model manager."""

from .checkpoints import CHECKPOINTS, RAW, TURBO, CheckpointSpec, get_spec
from .errors import Cancelled, GenerationFailed, InvalidRequest, Krea2Error, LoadError, NotReady
from .request import GenerationRequest

__all__ = [
    "CHECKPOINTS",
    "RAW",
    "TURBO",
    "Cancelled",
    "CheckpointSpec",
    "GenerationFailed",
    "GenerationRequest",
    "InvalidRequest",
    "Krea2Error",
    "LoadError",
    "NotReady",
    "get_spec",
]

__version__ = "0.1.0"
