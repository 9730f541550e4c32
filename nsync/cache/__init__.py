"""The activation cache: layer-major ``.npy`` arrays, a turns table and a manifest."""

from nsync.cache.reader import ActivationCache, describe_reply_flags
from nsync.cache.writer import CacheWriter, ModelInfo

__all__ = ["ActivationCache", "CacheWriter", "ModelInfo", "describe_reply_flags"]
