"""What loracle knows about a model as a whole: its layout (blocks, adapted layers, head), the cross-round cache
of the frozen prefix, and the one builder of "model + task + adapter + trained head".

Layering: ``adapters`` → ``tasks`` → ``modeling`` → ``uncertainty`` / ``training`` → ``evaluation`` → ``active``.
"""

from loracle.modeling.layout import ModelLayout
from loracle.modeling.prefix_cache import PrefixCache

__all__ = ["ModelLayout", "PrefixCache"]
