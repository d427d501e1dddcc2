"""Where the API server is and how to authenticate: in-cluster first, else KUBECONFIG.

The in-cluster path reads three files and two variables, with no import of the
``kubernetes`` package: kubessh runs once per worker per launch and must start
fast. Only the kubeconfig fallback (development, tests from outside a pod)
pays for the official client's loader, which knows every kubeconfig form.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from kubessh.errors import Exit, KubesshError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CREDENTIALS_FIX = "mount the pod's ServiceAccount token (automountServiceAccountToken) or fix KUBECONFIG"


@dataclass(frozen=True)
class ApiServer:
    url: str  # https://host:port, no trailing slash
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    namespace: str | None = None  # the service account's, or the kubeconfig context's

    def ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            files = [f for f in (self.ca_file, self.cert_file, self.key_file) if f]
            bad = [f for f in files if not os.access(f, os.R_OK)] or files
            raise KubesshError(f"cannot use {' or '.join(bad)} ({exc.strerror or exc}): {CREDENTIALS_FIX}",
                               Exit.CREDENTIALS) from None
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def user(self) -> str | None:
        """The token's subject (system:serviceaccount:NS:NAME), for error messages; None if opaque."""
        try:
            payload = (self.token or "").split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError):
            return None
        subject = claims.get("sub") if isinstance(claims, dict) else None
        return subject if isinstance(subject, str) else None

    def headers(self) -> list[str]:
        return [f"Authorization: Bearer {self.token}"] if self.token else []


def in_cluster(environ: dict[str, str] | os._Environ[str], sa_dir: Path = SERVICE_ACCOUNT) -> ApiServer | None:
    """The service account's settings in a pod; None outside one (no service host, or no token)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token_file = sa_dir / "token"
    if not host or not port or not token_file.exists():
        return None
    if ":" in host:
        host = f"[{host}]"
    namespace_file = sa_dir / "namespace"
    namespace = _read(namespace_file) if namespace_file.exists() else None
    return ApiServer(url=f"https://{host}:{port}", token=_read(token_file), ca_file=str(sa_dir / "ca.crt"),
                     namespace=namespace or None)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KubesshError(f"cannot read {path} ({getattr(exc, 'strerror', None) or exc}): {CREDENTIALS_FIX}",
                           Exit.CREDENTIALS) from None


def from_kubeconfig() -> ApiServer:
    from kubernetes import config
    from kubernetes.client import Configuration
    from kubernetes.config.config_exception import ConfigException

    settings = Configuration()
    try:
        config.load_kube_config(client_configuration=settings, persist_config=False)
        _, context = config.list_kube_config_contexts()
    except (ConfigException, OSError) as exc:
        raise KubesshError(f"no service-account token at {SERVICE_ACCOUNT / 'token'} and no usable kubeconfig "
                           f"({' '.join(str(exc).split())}): {CREDENTIALS_FIX}", Exit.CREDENTIALS) from None
    token = settings.get_api_key_with_prefix("authorization")
    return ApiServer(url=settings.host.rstrip("/"), token=token.removeprefix("Bearer ") if token else None,
                     ca_file=settings.ssl_ca_cert, cert_file=settings.cert_file, key_file=settings.key_file,
                     verify=bool(settings.verify_ssl), namespace=(context or {}).get("context", {}).get("namespace"))


def load(environ: dict[str, str] | os._Environ[str]) -> ApiServer:
    return in_cluster(environ) or from_kubeconfig()
