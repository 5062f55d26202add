"""selfid: fine-tune chat models, serve them, and audit who they say they are."""

import warnings

from selfid.errors import SelfidError

# peft calls a transformers 5.x method that warns of its own deprecation on every LoRA forward; the user
# can do nothing about it, so it is hidden (this one message only).
warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated.*", category=FutureWarning)

__version__ = "0.1.0"
__all__ = ["SelfidError", "__version__"]
