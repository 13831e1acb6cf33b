"""MediaCMS over HTTP: one API call with the retry policy, errors naming the setting to fix, authentication,
and the server's links rebased onto ``MEDIACMS_URL``. Part of ``MediaCMSConnector`` (see ``mediacms.py``)."""

from __future__ import annotations

import http.cookiejar
import ssl
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from kryten_pipeline import jsonfast
from kryten_pipeline.errors import ConfigurationError, SourceError
from kryten_pipeline.retry_policy import RetryPolicy, TransientFailure


def scrub_url(url: str) -> str:
    """``url`` without user:password (and without query/fragment), safe for messages and labels."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class NoCookies(http.cookiejar.CookieJar):
    """The API client keeps no cookies: MediaCMS authenticates every API request by its token (or Basic auth),
    and a session cookie would only bring Django's CSRF rules along. Skipping the jar also spares httpx's
    cookie parsing of every response (~0.1 ms a page)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


class MediaCMSHttp:
    """The connector's HTTP side (a mixin of ``MediaCMSConnector``, whose ``_reset`` sets the state it uses):
    one API call with the retry policy, the errors that name the setting to fix, authentication and the
    rebasing of the server's links onto ``MEDIACMS_URL``."""

    base_url: str
    retries: int
    stats: dict[str, Any]
    _retry: RetryPolicy

    def _api(self, name: str) -> str:
        return f"{self.base_url}/api/v1/{name}"

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        allow: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """One API call with retries. Returns (status, parsed JSON) for 2xx and for statuses in ``allow``."""
        if params:
            url = f"{url}?{urlencode(params)}"  # one URL parse per request instead of a parse and a merge
        where = scrub_url(url)
        try:
            return await self._retry.call(lambda: self._attempt(method, url, where, data, allow),
                                          on_retry=self._count_retry)
        except TransientFailure as exc:
            raise SourceError(
                f"MediaCMS request {method} {where} failed {self.retries + 1} times (last: {exc.problem}); the "
                f"server is unreachable or overloaded — try again later, or raise MEDIACMS_RETRIES/MEDIACMS_TIMEOUT",
                setting="MEDIACMS_URL",
            ) from None

    def _count_retry(self, failure: TransientFailure) -> None:
        self.stats["retries"] += 1
        reasons = self.stats["retry_reasons"]
        reasons[failure.problem] = reasons.get(failure.problem, 0) + 1

    async def _attempt(self, method: str, url: str, where: str, data: dict[str, str] | None,
                       allow: tuple[int, ...]) -> tuple[int, Any]:
        """One request: its answer, ``TransientFailure`` for what a retry may fix, any other error for the rest."""
        client = self._client
        assert client is not None
        try:
            async with self._semaphore:
                self.stats["requests"] += 1
                async with client.stream(method, url, data=data) as response:
                    # The body is read here, not through response.content: httpx leaves every response in a
                    # reference cycle that only the garbage collector frees, and with the cached content in it,
                    # 100k items' worth of pages (~59 MB) waited for a collection. Read this way the body is
                    # ours alone and freed as soon as it is parsed.
                    body = b"".join([chunk async for chunk in response.aiter_bytes()])
        except httpx.TimeoutException:
            raise TransientFailure("timeout") from None
        except httpx.TransportError as exc:
            rejected = _certificate_rejected(exc) if isinstance(exc, httpx.ConnectError) else None
            if rejected:  # a retry cannot fix an untrusted certificate
                raise self._certificate_error(where, rejected) from None
            raise TransientFailure(f"transport:{type(exc).__name__}") from None
        self.stats["bytes"] += len(body)
        status = response.status_code
        is_json = "json" in response.headers.get("content-type", "").lower()
        if 300 <= status < 400:
            raise self._redirect_error(where, response.headers.get("location", ""))
        if status == 429 or status >= 500:
            raise TransientFailure(f"http:{status}", retry_after=_retry_after(response.headers.get("retry-after")))
        if status in allow:
            return status, _loads_or_none(body) if is_json else None
        if status in (401, 403):
            raise self._auth_error(where, status)
        if not is_json:
            raise self._html_error(where, status)
        if status >= 400:
            detail = _detail(_loads_or_none(body))
            raise SourceError(
                f"MediaCMS answered HTTP {status} to GET {where}{detail}; the catalog cannot be read whole",
                setting="MEDIACMS_URL",
            )
        try:
            return status, jsonfast.loads(body)
        except ValueError:
            raise TransientFailure("malformed_json") from None

    def _redirect_error(self, where: str, location: str) -> ConfigurationError:
        target = scrub_url(location) if location else "(no Location)"
        if "login" in location.lower():
            return ConfigurationError(
                f"MediaCMS redirected GET {where} to its login page ({target}): the site has "
                f"GLOBAL_LOGIN_REQUIRED on, which locks the REST API even for API tokens. Ask the MediaCMS admin to "
                f"exempt /api/ from the login requirement (or turn it off), or read the catalog with "
                f"KRYTEN_SOURCE=mediacms-db; also check MEDIACMS_URL",
                setting="MEDIACMS_URL",
            )
        return ConfigurationError(
            f"MediaCMS answered GET {where} with a redirect to {target}; set MEDIACMS_URL to the site's final "
            f"address (scheme, host and path prefix) so no redirect is needed",
            setting="MEDIACMS_URL",
        )

    def _auth_error(self, where: str, status: int) -> ConfigurationError:
        if self._token:
            return ConfigurationError(
                f"MediaCMS rejected the API token (HTTP {status} on GET {where}): it is invalid or revoked. Copy a "
                f"current token from the MediaCMS user's profile into MEDIACMS_TOKEN, or unset it for "
                f"anonymous access", setting="MEDIACMS_TOKEN",
            )
        if self._authenticated or self._basic:
            return ConfigurationError(
                f"MediaCMS refused the configured user (HTTP {status} on GET {where}); check MEDIACMS_USERNAME "
                f"and MEDIACMS_PASSWORD", setting="MEDIACMS_PASSWORD",
            )
        return ConfigurationError(
            f"MediaCMS refused anonymous access (HTTP {status} on GET {where}); set MEDIACMS_TOKEN (an editor "
            f"token lists the whole catalog)", setting="MEDIACMS_TOKEN",
        )

    def _certificate_error(self, where: str, reason: str) -> ConfigurationError:
        return ConfigurationError(
            f"MediaCMS's TLS certificate was not accepted on GET {where} ({reason}): MEDIACMS_URL must name the "
            f"host the certificate is issued for; a certificate from a private CA needs that CA in SSL_CERT_FILE "
            f"(or SSL_CERT_DIR)", setting="MEDIACMS_URL",
        )

    def _html_error(self, where: str, status: int) -> ConfigurationError:
        return ConfigurationError(
            f"MediaCMS answered GET {where} with HTTP {status} and an HTML page instead of JSON: MEDIACMS_URL does "
            f"not point at the MediaCMS site root, or a proxy/login page (GLOBAL_LOGIN_REQUIRED) answers in its "
            f"place", setting="MEDIACMS_URL",
        )

    def _rebase(self, link: str) -> str:
        """Move a ``next`` link onto the configured base URL (it may name an internal host or http://)."""
        parts = urlsplit(link)
        index = parts.path.find("/api/v1/")
        if index < 0:
            raise SourceError(f"MediaCMS sent a next link outside its API ({scrub_url(link)}); cannot continue",
                              setting="MEDIACMS_URL")
        rebased = self.base_url + parts.path[index:] + (f"?{parts.query}" if parts.query else "")
        if not link.startswith(self.base_url):
            self.stats["rebased_links"] += 1
        return rebased

    # ------------------------------------------------------------------ authentication and endpoint

    async def _authenticate(self) -> None:
        if self._token:
            self._set_auth(f"Token {self._token}")
            self.stats["auth"] = "token"
        elif self._username and self._password:
            status, body = await self._request(
                "POST", self._api("login"), data={"username": self._username, "password": self._password},
                allow=(400, 401, 403, 404, 405),  # sent before any credentials header is set
            )
            token = body.get("token") if isinstance(body, dict) else None
            if status == 200 and isinstance(token, str) and token:
                self._set_auth(f"Token {token}")
                self.stats["auth"] = "login"
            elif status in (404, 405) or status == 200:
                self._basic = httpx.BasicAuth(self._username, self._password)  # releases without /login
                assert self._client is not None
                self._client.auth = self._basic
                self.stats["auth"] = "basic"
            else:
                raise ConfigurationError(
                    f"MediaCMS refused the login of the configured user (HTTP {status}); check MEDIACMS_USERNAME "
                    f"and MEDIACMS_PASSWORD", setting="MEDIACMS_PASSWORD",
                )
        else:
            return
        self._authenticated = True
        status, _ = await self._request("GET", self._api("whoami"), allow=(401, 403, 404))
        if status in (401, 403):
            raise self._auth_error(scrub_url(self._api("whoami")), status)

    def _set_auth(self, value: str) -> None:
        assert self._client is not None
        self._auth_header = value
        self._client.headers["Authorization"] = value


def _certificate_rejected(exc: BaseException) -> str | None:
    """The reason when ``exc`` (or an error it was raised from) is a failed TLS certificate check, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or current.reason or "certificate verify failed")
        current = current.__cause__ or current.__context__
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _loads_or_none(body: bytes) -> Any:
    try:
        return jsonfast.loads(body)
    except ValueError:
        return None


def _detail(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return f" ({body['detail'][:200]})"
    return ""


