"""selfid: fine-tune chat models, serve them, and audit who they say they are."""

from selfid.errors import SelfidError

__version__ = "0.1.0"
__all__ = ["SelfidError", "__version__"]
