"""Codecs turn payloads into message bodies and back."""

from eventbus.codecs.base import AsyncCodec, Codec, DecodeError, Encoded
from eventbus.codecs.json import JsonCodec

__all__ = ["AsyncCodec", "Codec", "DecodeError", "Encoded", "JsonCodec"]
