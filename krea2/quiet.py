"""A quiet terminal: what the app prints at start-up should be about the app.

transformers and diffusers import torchao as soon as it is installed (their quantizer registries), and on a machine
without a suitable CUDA GPU that import prints failures to load torchao's CUDA extensions, torch deprecation warnings
and "Unable to import torchao Tensor objects". The app only uses torchao for fp8 on CUDA (krea2/acceleration.py
imports it there), so where there is no CUDA at all, the libraries are told that torchao is not there. Their progress
bars (one per pipeline load) and the per-request logs of httpx and alembic are turned off too: the app logs its own
lines.
"""

from __future__ import annotations

import logging
import sys

NOISY_LOGGERS = ("httpx", "alembic", "alembic.runtime.migration", "alembic.runtime.plugins")


def cuda_present() -> bool:
    """Whether torchao could be used at all. Only `is_available`: asking for the device capability would initialise
    CUDA in this process, which ZeroGPU forbids outside its GPU functions."""
    import torch

    return torch.cuda.is_available()


def hide_torchao() -> None:
    """Make transformers and diffusers believe torchao is absent. Must run before either loads its quantizers."""
    if any(name == "torchao" or name.startswith("torchao.") for name in sys.modules):
        return  # already imported: nothing left to spare
    import diffusers.utils.import_utils as diffusers_imports
    import transformers.utils as transformers_utils
    import transformers.utils.import_utils as transformers_imports

    def absent(*_args, **_kwargs) -> bool:
        return False

    diffusers_imports._torchao_available = False
    for module in (transformers_imports, transformers_utils):
        module.is_torchao_available = absent


def quiet_libraries() -> None:
    """Call once at start-up, before the pipelines are imported."""
    if not cuda_present():
        hide_torchao()
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
