"""The HTTP client of the descriptor generator: one chat-completions request to an OpenAI-compatible endpoint.

:func:`chat_completion` sends one ``POST {base_url}/chat/completions`` under one wall-clock deadline
(connecting, the headers and the whole body; see :class:`_Deadline`) and returns the answer's text.
Failures are :class:`EndpointError` (``retryable`` says whether asking again may help) or
:class:`UnusableAnswerError`; their messages are one line and never contain the API key.  Retrying,
parsing and files are :mod:`avalanche_convprompt.language.descriptors.generate`'s business, which
re-exports everything here.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Mapping, Sequence

__all__ = ["DescriptorGenerationError", "EndpointError", "UnusableAnswerError", "chat_completion"]

_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_EXCERPT_CHARS = 200


# ------------------------------------------------------------------------------------------ errors

class DescriptorGenerationError(RuntimeError):
    """Generation failed; the message is one line, says what to check and never contains the API key."""


class EndpointError(DescriptorGenerationError):
    """One request to the endpoint failed.

    ``retryable`` tells whether asking again may help (connection errors, timeouts, HTTP 408/429/5xx,
    malformed bodies) or not (HTTP 401/403/404 and other 4xx); ``status`` is the HTTP status or
    ``None``; ``retry_after`` the server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class UnusableAnswerError(DescriptorGenerationError):
    """The model answered, but not with enough usable descriptors (``answer`` holds the raw text)."""

    def __init__(self, message: str, answer: str = ""):
        super().__init__(message)
        self.answer = answer


def _display_url(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _redact(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return text


def _excerpt(text: str, secret: str | None = None, limit: int = _EXCERPT_CHARS) -> str:
    """``text`` on one line, without ``secret``, cut to ``limit`` characters, quoted with ``repr``."""
    flat = _one_line(_redact(text, secret))
    if len(flat) > limit:
        flat = flat[:limit] + "..."
    return repr(flat)


# ------------------------------------------------------------------------------------------ HTTP

def _endpoint_url(base_url: str) -> str:
    base = base_url.strip().rstrip("/")
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in ("http", "https"):
        raise DescriptorGenerationError(
            f"base URL {base_url!r} must start with http:// or https:// (e.g. http://localhost:11434/v1)")
    if base.endswith("/chat/completions"):
        return base
    return base + "/chat/completions"


def _retry_after(headers) -> float | None:
    try:
        value = float(headers.get("Retry-After")) if headers is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and value >= 0 else None


def _http_error(e: urllib.error.HTTPError, url: str, model: str, api_key_env: str | None,
                secret: str | None) -> EndpointError:
    code = e.code
    try:
        body = e.read(4096).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the body is only a hint
        body = ""
    detail = f" (server said: {_excerpt(body, secret)})" if body.strip() else ""
    if code in (401, 403):
        env = f"the environment variable {api_key_env}" if api_key_env else "the API key environment variable"
        have = "is set" if secret else "is not set"
        return EndpointError(
            f"HTTP {code} from {url}: the API key was refused or is missing; check {env} ({have})"
            f"{detail}", retryable=False, status=code)
    if code == 404:
        return EndpointError(
            f"HTTP 404 from {url}: check the model name {model!r} and the base URL (OpenAI-compatible "
            f"servers usually need the /v1 suffix, e.g. http://localhost:11434/v1){detail}",
            retryable=False, status=code)
    if code in (408, 429) or code >= 500:
        what = "rate limited" if code == 429 else "server error"
        return EndpointError(f"HTTP {code} ({what}) from {url}{detail}", retryable=True, status=code,
                             retry_after=_retry_after(e.headers))
    return EndpointError(f"HTTP {code} from {url}: the request was rejected (check the model name "
                         f"{model!r} and the options){detail}", retryable=False, status=code)


def _message_content(body: bytes, url: str, secret: str | None) -> str:
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise EndpointError(f"malformed response from {url}: not JSON: {_excerpt(text, secret)}",
                            retryable=True) from None
    try:
        content = doc["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise EndpointError(f"malformed response from {url}: no choices[0].message.content in "
                            f"{_excerpt(text, secret)}", retryable=True) from None
    if isinstance(content, list):  # content given as parts: [{"type": "text", "text": ...}]
        content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if not isinstance(content, str) or not content.strip():
        raise UnusableAnswerError(f"empty answer from {url}: {_excerpt(text, secret)}", answer=text)
    return content


def chat_completion(base_url: str, model: str, messages: Sequence[Mapping[str, str]], *,
                    api_key: str | None = None, timeout: float = 60.0, temperature: float | None = 0.0,
                    api_key_env: str | None = None) -> str:
    """One ``POST {base_url}/chat/completions`` request; returns ``choices[0].message.content``.

    ``timeout`` (seconds) is one wall-clock deadline for the whole request: connecting, the headers
    and the whole body (a server that trickles bytes or sends an endless body is cut off at it, see
    :class:`_Deadline`).  Sends ``Authorization: Bearer`` only when ``api_key`` is given;
    ``temperature=None`` leaves the field out.  ``api_key_env`` only
    names the variable in error messages.  Raises :class:`EndpointError` (with ``retryable``) or
    :class:`UnusableAnswerError` (empty answer); messages never contain the key.
    """
    url = _display_url(_endpoint_url(base_url))
    shown_base = _display_url(base_url.strip())
    payload: dict = {"model": model, "messages": [dict(m) for m in messages]}
    if temperature is not None:
        payload["temperature"] = temperature
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "User-Agent": "avalanche-convprompt-descriptors"}
    if api_key:
        if any(c.isspace() or ord(c) < 32 for c in api_key):
            # http.client would quote the bad header value (the key) in its error
            raise EndpointError("the API key contains whitespace or control characters; check "
                                f"{api_key_env or 'the API key environment variable'}", retryable=False)
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(_endpoint_url(base_url), data=json.dumps(payload).encode("utf-8"),
                                     headers=headers, method="POST")
    deadline = _Deadline(timeout)
    try:
        with deadline:
            body = _exchange(request, deadline, url, model, api_key_env, api_key)
        if deadline.expired:                # the watchdog cut the connection: whatever came is incomplete
            raise TimeoutError
    except EndpointError:
        if deadline.expired:
            raise _timeout_error(url, timeout) from None
        raise
    except (TimeoutError, socket.timeout):
        raise _timeout_error(url, timeout) from None
    except urllib.error.URLError as e:
        reason = e.reason
        if deadline.expired or isinstance(reason, (TimeoutError, socket.timeout)):
            raise _timeout_error(url, timeout) from None
        raise EndpointError(
            f"cannot reach {shown_base} ({_one_line(_redact(str(reason), api_key))}): is the server running "
            "and the address right, and does the base URL include the API prefix "
            "(e.g. http://localhost:11434/v1)?", retryable=True) from None
    except (ConnectionError, http.client.HTTPException, OSError, ValueError) as e:
        if deadline.expired:                # a read cut short by the watchdog, whatever it raised
            raise _timeout_error(url, timeout) from None
        if isinstance(e, ValueError):
            raise
        raise EndpointError(f"connection to {url} failed ({type(e).__name__}: "
                            f"{_one_line(_redact(str(e), api_key))})", retryable=True) from None
    return _message_content(body, url, api_key)


def _timeout_error(url: str, timeout: float) -> EndpointError:
    return EndpointError(f"no answer from {url} within the {timeout:g} s timeout (one deadline for the "
                         "connection, the headers and the whole body)", retryable=True)


def _exchange(request: urllib.request.Request, deadline: "_Deadline", url: str, model: str,
              api_key_env: str | None, secret: str | None) -> bytes:
    """Send ``request`` and read the whole answer (an HTTP error's body too) under ``deadline``."""
    opener = urllib.request.build_opener(_DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline))
    try:
        response = opener.open(request, timeout=max(deadline.remaining(), 1e-3))
    except urllib.error.HTTPError as e:
        try:
            raise _http_error(e, url, model, api_key_env, secret) from None
        finally:
            e.close()
    with response:
        chunks, size = [], 0
        while True:
            chunk = response.read(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_RESPONSE_BYTES:
                raise EndpointError(f"malformed response from {url}: larger than "
                                    f"{_MAX_RESPONSE_BYTES} bytes", retryable=True)
            if deadline.remaining() <= 0:
                raise TimeoutError


class _Deadline:
    """One wall-clock deadline for a whole request.

    A socket timeout bounds each ``recv`` on its own, so a server that sends one byte
    every half second (in the headers or the body, or an endless chunked body) would
    keep a request alive forever. Here a timer shuts the request's sockets down when
    the deadline passes, which ends any blocked read at once; :attr:`expired` then
    tells the caller that what it read is incomplete. (Name resolution is not
    interruptible; the TLS handshake is bounded by the socket timeout, which is at
    most the time left when the connection opens.)
    """

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def watch(self, sock) -> None:
        """Cut ``sock`` at the deadline (the object itself: urllib drops the connection's reference to
        it once the headers are in, while the response keeps reading from it)."""
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock) -> None:
        try:    # the plain socket's shutdown, also for an SSLSocket: no TLS state is touched from this thread
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            self._sockets.clear()


class _WatchedConnections:
    """``do_open`` of urllib's handlers with every connection registered with a :class:`_Deadline`."""

    def __init__(self, deadline: _Deadline, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def do_open(self, http_class, req, **http_conn_args):
        deadline = self.deadline

        def connection(*args, **kwargs):
            conn = http_class(*args, **kwargs)
            connect = conn.connect

            def watched_connect():
                conn.timeout = max(min(conn.timeout, deadline.remaining()), 1e-3)
                connect()
                deadline.watch(conn.sock)

            conn.connect = watched_connect
            return conn

        return super().do_open(connection, req, **http_conn_args)


class _DeadlineHTTPHandler(_WatchedConnections, urllib.request.HTTPHandler):
    pass


class _DeadlineHTTPSHandler(_WatchedConnections, urllib.request.HTTPSHandler):
    pass
