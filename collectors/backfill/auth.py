"""Credentials for the source APIs, as httpx ``Auth`` objects.

- Jira Cloud: e-mail + API token (HTTP Basic).
- Jira Data Center: a personal access token (``Bearer``).
- GitHub: a token (personal, fine-grained, or an installation token obtained
  elsewhere), or a GitHub App (app id + private key + installation id): an
  installation token is minted from a short-lived RS256 JWT and renewed five
  minutes before it expires. The App path needs PyJWT with its crypto extra
  (``pip install 'flowmetrics[github-app]'``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Generator
from datetime import datetime

import httpx

from collectors.backfill.exceptions import BackfillConfigError, SourceAuthError

_RENEW_BEFORE_S = 300.0


class BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


def jira_auth(*, email: str | None, api_token: str | None, pat: str | None) -> httpx.Auth:
    if pat:
        return BearerAuth(pat)
    if email and api_token:
        return httpx.BasicAuth(email, api_token)
    raise BackfillConfigError(
        "Jira credentials missing: FLOW_JIRA_EMAIL + FLOW_JIRA_API_TOKEN (Jira Cloud) "
        "or FLOW_JIRA_PAT (Data Center)"
    )


def github_auth(
    *,
    token: str | None,
    app_id: str | None,
    private_key: str | None,
    installation_id: str | None,
    api_url: str,
) -> httpx.Auth:
    if app_id or private_key or installation_id:
        if not (app_id and private_key and installation_id):
            raise BackfillConfigError(
                "GitHub App auth needs FLOW_GITHUB_APP_ID, FLOW_GITHUB_APP_PRIVATE_KEY and "
                "FLOW_GITHUB_APP_INSTALLATION_ID together"
            )
        return GitHubAppAuth(app_id, private_key, installation_id, api_url=api_url)
    if token:
        return BearerAuth(token)
    raise BackfillConfigError(
        "GitHub credentials missing: FLOW_GITHUB_TOKEN, or the FLOW_GITHUB_APP_* settings"
    )


class GitHubAppAuth(httpx.Auth):
    """Installation tokens of a GitHub App, minted on first use and renewed before expiry."""

    def __init__(
        self,
        app_id: str,
        private_key: str,
        installation_id: str,
        *,
        api_url: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            import jwt  # noqa: F401 - checked here so a missing extra fails at start-up
        except ImportError as exc:
            raise BackfillConfigError(
                "GitHub App auth needs PyJWT: pip install 'flowmetrics[github-app]'"
            ) from exc
        self.app_id = app_id
        self.private_key = private_key
        self.installation_id = installation_id
        self.api_url = api_url.rstrip("/")
        self.clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def app_jwt(self) -> str:
        import jwt

        now = int(self.clock())
        # iat 60 s in the past against clock drift; GitHub allows at most 10 minutes.
        claims = {"iat": now - 60, "exp": now + 540, "iss": self.app_id}
        return jwt.encode(claims, self.private_key, algorithm="RS256")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("GitHubAppAuth works with httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        async with self._lock:
            if self._token is None or self._expires_at - self.clock() < _RENEW_BEFORE_S:
                response = yield httpx.Request(
                    "POST",
                    f"{self.api_url}/app/installations/{self.installation_id}/access_tokens",
                    headers={
                        "Authorization": f"Bearer {self.app_jwt()}",
                        "Accept": "application/vnd.github+json",
                    },
                )
                await response.aread()  # overriding async_auth_flow skips httpx's own read
                self._accept(response)
        assert self._token is not None
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def _accept(self, response: httpx.Response) -> None:
        if response.status_code != 201:
            raise SourceAuthError(
                f"github app: installation token refused ({response.status_code}): "
                f"{response.text[:200]}",
                status=response.status_code,
            )
        data = response.json()
        token, expires = data.get("token"), data.get("expires_at")
        if not isinstance(token, str) or not isinstance(expires, str):
            raise SourceAuthError("github app: token response without token/expires_at")
        self._token = token
        self._expires_at = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
