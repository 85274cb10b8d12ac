"""ctrag.encoders: text and volume encoders behind one interface (``Encoder``), built by ``create_encoder``.

Heavy libraries (sentence-transformers, transformers, MONAI networks) are imported only when an encoder that needs
them is created, so importing this package stays cheap.
"""

from ctrag.encoders.base import Encoder, l2_normalise
from ctrag.encoders.cache import EmbeddingCache, encode_text_cached
from ctrag.encoders.factory import create_encoder, get_model_config, list_encoders
from ctrag.encoders.pretrained import get_pretrained_cfg, list_pretrained, resolve_pretrained

__all__ = [
    "EmbeddingCache",
    "Encoder",
    "create_encoder",
    "encode_text_cached",
    "get_model_config",
    "get_pretrained_cfg",
    "l2_normalise",
    "list_encoders",
    "list_pretrained",
    "resolve_pretrained",
]
