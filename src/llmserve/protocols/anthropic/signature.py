"""Signatures of thinking blocks: an HMAC of the reasoning text, so a block passed back changed is
caught (Anthropic's rule: thinking blocks return unmodified).

The key is derived from ``--api-key`` when one is set, else from the served model's name: stable
across restarts (a conversation survives one), and, without an API key, a check against accidental
edits rather than a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def key_for(api_key: str | None, model: str) -> bytes:
    """The signing key of one served model."""
    return hashlib.sha256(f"llmserve-thinking\0{api_key or ''}\0{model}".encode()).digest()


def sign(key: bytes, thinking: str) -> str:
    """The signature of ``thinking`` (urlsafe base64, unpadded)."""
    # surrogatepass: JSON may carry lone surrogates (\ud800), which strict UTF-8 cannot encode
    digest = hmac.new(key, thinking.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify(key: bytes, thinking: str, signature: str) -> bool:
    """True when ``signature`` is the one this server gave ``thinking``."""
    # bytes: compare_digest refuses str with non-ASCII characters (a client may send any)
    return hmac.compare_digest(sign(key, thinking).encode(), signature.encode("utf-8", "surrogatepass"))
