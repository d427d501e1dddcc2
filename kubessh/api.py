"""The one REST call kubessh makes (read the pod), API errors as meanings, and retries."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from kubessh.denial import BEFORE_ACCEPTED_S, DenialGrace
from kubessh.errors import Exit, KubesshError, Transient
from kubessh.server import ApiServer

T = TypeVar("T")
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
ROLE_HINT = "grant the launcher's Role: pods get/list/watch, pods/exec create/get"
_FORBIDDEN = re.compile(r'User "([^"]*)" cannot (\w+) resource "([^"]+)"')
# How the API server words a refusal by an admission policy or webhook (after RBAC allowed the call)
_ADMISSION = re.compile(r"(ValidatingAdmissionPolicy|admission webhook) .*denied (the )?request")


def api_message(body: bytes | str) -> str:
    """The ``message`` of a metav1.Status body, else the body's first line."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        status = json.loads(text)
    except ValueError:
        status = None
    message = status.get("message") if isinstance(status, dict) else None
    if isinstance(message, str):
        return message
    return (text.strip().splitlines() or ["(no body)"])[0]


def forbidden(message: str, namespace: str, verb: str, resource: str, user: str | None) -> KubesshError:
    """The API names user, verb and resource for RBAC denials, but not for the extra
    'create' check on a websocket exec: then the caller's guess stands. An admission policy's
    refusal is final (the credentials were accepted) and its own message says why."""
    if _ADMISSION.search(message):
        return KubesshError(f"refused by the API server's admission: {message}", Exit.FORBIDDEN)
    found = _FORBIDDEN.search(message)
    if found:
        user, verb, resource = found.group(1), found.group(2), found.group(3)
    who = f" as {user}" if user else ""
    return Transient(f"forbidden: cannot {verb} {resource} in namespace {namespace}{who} ({ROLE_HINT})",
                     Exit.FORBIDDEN)


def http_error(status: int, body: bytes | str, *, namespace: str, pod: str, verb: str,
               resource: str, user: str | None = None) -> KubesshError:
    """An API answer other than success, as a KubesshError (Transient when nothing ran)."""
    message = api_message(body)
    if status == 403:
        return forbidden(message, namespace, verb, resource, user)
    if status == 404:
        return KubesshError(f"pod {pod} not found in namespace {namespace}", Exit.NO_POD)
    if status == 401:
        return KubesshError(f"unauthorized: the API server rejected this token ({message})")
    if status in TRANSIENT_STATUS:
        return Transient(f"API server answered {status} to {verb} {resource}: {message}")
    return KubesshError(f"{verb} {resource} {pod} failed ({status}): {message}")


def retrying(action: Callable[[], T], budget_s: float) -> T:
    """``action()``, again with exponential backoff while it raises Transient, within a budget; a
    denial only for as long as ``DenialGrace`` allows credentials never accepted."""
    start = time.monotonic()
    deadline = start + budget_s
    denial = DenialGrace(before_accepted_s=min(budget_s, BEFORE_ACCEPTED_S))
    delay = 0.1
    while True:
        try:
            return action()
        except Transient as exc:
            now = time.monotonic()
            if exc.code == Exit.FORBIDDEN and (denial.final(now) or denial.remaining(now) < delay):
                raise KubesshError(str(exc), exc.code) from None
            if now + delay > deadline:
                raise KubesshError(f"{exc} (gave up after {budget_s:.0f}s of retries)") from exc
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def get_pod(server: ApiServer, namespace: str, pod: str, timeout_s: float = 10) -> dict[str, Any]:
    """The pod object (GET is idempotent: any connection failure is transient)."""
    parts = urlsplit(server.url)
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}"
    connection = http.client.HTTPSConnection(parts.netloc, timeout=timeout_s, context=server.ssl_context())
    headers = dict(h.split(": ", 1) for h in server.headers())
    try:
        connection.request("GET", path, headers={**headers, "Accept": "application/json"})
        response = connection.getresponse()
        body = response.read()
    except ssl.SSLCertVerificationError as exc:
        raise KubesshError(f"the API server's certificate at {server.url} is not trusted: {exc}") from exc
    except OSError as exc:
        raise Transient(f"cannot reach the API server at {server.url}: {exc}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise http_error(response.status, body, namespace=namespace, pod=pod, verb="get", resource="pods",
                         user=server.user())
    result: dict[str, Any] = json.loads(body)
    return result
