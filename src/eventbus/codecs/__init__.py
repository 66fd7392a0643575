"""Codecs turn payloads into message bodies and back."""

from eventbus.codecs.base import Codec, DecodeError, Encoded
from eventbus.codecs.json import JsonCodec

__all__ = ["Codec", "DecodeError", "Encoded", "JsonCodec"]
