"""A cache of decoded KS strings, shared by every request.

Players send the same KS with every event of a page view, and a KS v2
costs an AES decryption to read. :class:`KsReader` decodes each distinct
KS once and keeps a bounded number of results, oldest dropped first.

Serves step 3 (resolve).
"""

from __future__ import annotations

from typing import Final

from proxy.kaltura.ks import NO_SECRETS, AdminSecrets, KalturaSession, parse_ks

DEFAULT_CACHE_SIZE: Final = 4096


class KsReader:
    """Reads KS strings with the partners' admin secrets, caching results."""

    def __init__(
        self,
        secrets: AdminSecrets = NO_SECRETS,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._secrets = secrets
        self._cache_size = cache_size
        self._cache: dict[str, KalturaSession | None] = {}

    def session(self, ks: str) -> KalturaSession | None:
        """The decoded KS, or None when it is not a well-formed KS."""
        try:
            return self._cache[ks]
        except KeyError:
            pass

        session = parse_ks(ks, self._secrets)
        if len(self._cache) >= self._cache_size:
            # dicts keep insertion order: the first key is the oldest
            del self._cache[next(iter(self._cache))]
        self._cache[ks] = session
        return session

    def user(self, ks: str) -> str | None:
        """The real user a KS names; None for widget, anonymous or bad ones."""
        session = self.session(ks)
        if session is None or not session.has_user:
            return None
        return session.user_id
