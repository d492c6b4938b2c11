"""hashtorch: search engines for hashindex written with torch (kept out of the torch-free core).

Importing it registers the ``"torch"`` engine; an installed distribution also declares it in the
``hashindex.engines`` entry-point group, so ``hashindex.create_engine("torch")`` finds it unimported.
"""

from hashindex.engines import register_engine

from .engine import TorchEngine

register_engine(TorchEngine.name, TorchEngine)

__all__ = ["TorchEngine"]
