"""An HTTP client for reward services: timeouts, bounded retries with exponential back-off on
connection errors and 5xx answers (never on 4xx), errors that name the reward, the URL and what
happened. Built on ``httpx`` (``pip install 'treesdk[remote]'``)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from treesdk.errors import UserError

from .common import require


class RemoteRewardError(UserError):
    """A reward service that could not be used: unreachable, too slow, refused the request (4xx),
    failed (5xx) or answered something that is not the expected JSON. The message names the reward,
    the URL and what happened; the run stops (its last checkpoint stays, ``--resume`` continues)."""


def token_from_env(variable: str | None, reward: str, option: str) -> str | None:
    """The secret in environment variable ``variable`` (None: no authentication); an unset or empty
    variable is a :class:`UserError` naming it (the token itself is never printed or stored)."""
    if not variable:
        return None
    value = os.environ.get(str(variable), "")
    if not value:
        raise UserError(f"reward {reward!r}: {option}={variable!r} names an environment variable that is not set; "
                        f"export {variable}=<token> or drop {option}")
    return value


class ServiceClient:
    """A JSON client for one base URL.

    Args:
        reward: the reward's name, for messages.
        url: the service's base URL (``http://host:port`` or with a path prefix).
        timeout: seconds for connecting and for each read (a server silent for longer has timed out).
        retries: extra attempts after a connection error, a timeout or a 5xx answer (0: none).
        backoff: seconds before the first retry; doubled before each further one.
        token: sent as ``Authorization: Bearer <token>`` when given; token_option: the option naming
            its variable (``token_env=VAR``), for the hint of a 401/403.
    """

    def __init__(self, reward: str, url: str, *, timeout: float, retries: int, backoff: float, token: str | None,
                 token_option: str = "token_env") -> None:
        httpx = require("httpx", "remote", reward)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise UserError(f"reward {reward!r}: url={url!r} is not an http(s) URL; give e.g. url=http://127.0.0.1:8000")
        if not float(timeout) > 0:
            raise UserError(f"reward {reward!r}: timeout={timeout!r} must be a number of seconds > 0")
        if int(retries) < 0 or float(backoff) < 0:
            raise UserError(f"reward {reward!r}: retries={retries!r} and backoff={backoff!r} must be >= 0")
        self.reward, self.url = reward, url.rstrip("/")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.token_hint = (f"; check the token ({token_option} names the variable that holds it)" if token
                           else f"; the server may want a token: set {token_option}=VARIABLE")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._httpx = httpx
        self._client = httpx.Client(timeout=httpx.Timeout(self.timeout), headers=headers, follow_redirects=False)

    def fail(self, path: str, what: str) -> RemoteRewardError:
        return RemoteRewardError(f"reward {self.reward!r} at {self.url}{path}: {what}")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send ``body`` as JSON (None: no body) and return the decoded JSON answer, retrying as the
        class says; every failure is a :class:`RemoteRewardError`."""
        httpx = self._httpx
        content = None if body is None else json.dumps(body, allow_nan=False).encode()
        headers = {"Content-Type": "application/json"} if content is not None else {}
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._client.request(method, self.url + path, content=content, headers=headers)
            except httpx.TimeoutException as exc:
                problem = f"no answer within timeout={self.timeout:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                problem = f"cannot reach the server ({type(exc).__name__}: {exc or 'connection failed'})"
            else:
                if response.status_code >= 500:
                    problem = f"the server failed with HTTP {response.status_code} ({_snippet(response)})"
                elif response.status_code >= 400:
                    hint = self.token_hint if response.status_code in (401, 403) else ""
                    raise self.fail(path, f"the server refused the request with HTTP {response.status_code} ({_snippet(response)}){hint}")
                else:
                    return self._json(path, response)
            if last:
                tries = f" after {self.retries + 1} attempts" if self.retries else ""
                raise self.fail(path, problem + tries)
            time.sleep(self.backoff * (2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, path: str, response: Any) -> Any:
        kind = response.headers.get("content-type", "?").split(";")[0]
        try:
            return json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise self.fail(path, f"the answer is not JSON (HTTP {response.status_code}, content-type {kind}: "
                                  f"{_snippet(response)})") from None

    def close(self) -> None:
        self._client.close()


def _snippet(response: Any, limit: int = 200) -> str:
    text = " ".join(response.text.split())
    return repr(text[:limit] + ("..." if len(text) > limit else "")) if text else "empty body"
