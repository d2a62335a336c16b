"""Errors of the API backfill.

BackfillError
├── SourceError                 the source API did not give us what we asked for
│   ├── SourceAuthError         401, or 403 that is not a rate limit: bad or missing credentials
│   ├── SourceNotFound          404: no such project, repository or issue (or no access to it)
│   ├── SourceRequestError      other 4xx: our request is wrong (a bug, or an unsupported server)
│   ├── SourceUnavailable       5xx / network errors, still failing after every retry
│   └── SourceResponseError     a 2xx whose body is not the shape we read
├── ScopeBusy                   another backfill holds this source/scope's cursor lock
├── CursorStoreUnavailable      the database that keeps the cursors cannot be reached
└── BackfillConfigError         settings missing or contradictory (no base URL, no token, ...)

Third-party errors (httpx, psycopg) are translated into these at the adapter edge.
"""

from __future__ import annotations


class BackfillError(Exception):
    """Base of the backfill's errors."""


class SourceError(BackfillError):
    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class SourceAuthError(SourceError):
    """The source refused our credentials (or they lack a permission)."""


class SourceNotFound(SourceError):
    """The source has no such resource, or hides it from these credentials."""


class SourceRequestError(SourceError):
    """The source rejected the request itself (4xx other than auth, 404 and rate limits)."""


class SourceUnavailable(SourceError):
    """5xx or network errors that outlasted the retry budget."""


class SourceResponseError(SourceError):
    """A successful response whose body is not what the API documents."""


class ScopeBusy(BackfillError):
    """Another run holds the lock of this source/scope."""


class CursorStoreUnavailable(BackfillError):
    """The cursor table cannot be read or written (database down, not migrated)."""


class BackfillConfigError(BackfillError):
    """The settings do not allow this backfill (missing URL or credentials, ...)."""
