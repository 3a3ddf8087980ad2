"""Transport security: TLS on every server, client certificates (mTLS) and caller identities where
configured, and the credentials the gateway dials the components with.

Server side (flags of every server, or PMIS_* environment variables):
- `--tls-cert`/`--tls-key` (PMIS_TLS_CERT, PMIS_TLS_KEY): PEM certificate chain and key. Re-read
  when either file changes (a renewed Kubernetes Secret): new connections get the new pair,
  open ones keep theirs.
- `--tls-client-ca` (PMIS_TLS_CLIENT_CA): require a client certificate signed by this CA (mTLS).
- `--tls-allowed-callers` (PMIS_TLS_ALLOWED_CALLERS): comma-separated identities (certificate
  common name or DNS name) allowed to call; any other caller gets PERMISSION_DENIED. Health and
  reflection stay open to every client that completes the handshake.
Without a certificate a server listens in plaintext and says so with a WARNING at start-up:
fine on loopback for development, never across a network.

Client side (the gateway dialing the components; `pmis` tools):
- `--tls-ca` (PMIS_TLS_CA): verify servers with this CA; set = dial over TLS.
- `--tls-client-cert`/`--tls-client-key` (PMIS_TLS_CLIENT_CERT, PMIS_TLS_CLIENT_KEY): the
  identity presented to servers that require one.
- `--tls-server-name` (PMIS_TLS_SERVER_NAME): the name expected in server certificates when it is
  not the dialled host (e.g. dialling 127.0.0.1 or a pod IP).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.config import flag

log = logging.getLogger("pmis.tls")


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _stamp(*paths) -> tuple:
    return tuple(os.stat(p).st_mtime_ns for p in paths if p)


@dataclass(frozen=True)
class ServerTLS:
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    allowed_callers: frozenset = frozenset()

    @property
    def enabled(self) -> bool:
        return self.cert is not None

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that re-read the files when they change (checked at each new handshake)."""
        files = (self.cert, self.key, self.client_ca)
        lock = threading.Lock()
        state = {"stamp": _stamp(*files)}

        def load() -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(_read(self.key), _read(self.cert))],
                root_certificates=_read(self.client_ca) if self.client_ca else None)

        def fetch():
            try:
                stamp = _stamp(*files)
                with lock:
                    if stamp == state["stamp"]:
                        return None  # unchanged: keep the current configuration
                    state["stamp"] = stamp
                config = load()
            except (OSError, ValueError) as e:  # a half-written renewal: keep serving the old pair
                log.warning("TLS certificate reload failed; keeping the current one: %s", e)
                return None
            log.info("TLS certificate reloaded", extra={"fields": {"cert": str(self.cert)}})
            return config

        return grpc.dynamic_ssl_server_credentials(load(), fetch,
                                                   require_client_authentication=self.client_ca is not None)


@dataclass(frozen=True)
class ClientTLS:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        return self.ca is not None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key) if self.key else None,
            certificate_chain=_read(self.cert) if self.cert else None)

    def options(self) -> list:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def add_server_args(p: argparse.ArgumentParser) -> None:
    flag(p, "--tls-cert", "TLS_CERT", type=Path, help="serve TLS with this PEM certificate chain; unset: plaintext")
    flag(p, "--tls-key", "TLS_KEY", type=Path, help="its PEM key")
    flag(p, "--tls-client-ca", "TLS_CLIENT_CA", type=Path,
         help="require client certificates signed by this CA: mTLS")
    flag(p, "--tls-allowed-callers", "TLS_ALLOWED_CALLERS", "",
         help="comma-separated certificate identities (CN or DNS name) allowed to call; others get PERMISSION_DENIED")


def add_client_args(p: argparse.ArgumentParser) -> None:
    flag(p, "--tls-ca", "TLS_CA", type=Path, help="dial over TLS, verifying servers with this CA")
    flag(p, "--tls-client-cert", "TLS_CLIENT_CERT", type=Path, help="certificate presented to servers that require one")
    flag(p, "--tls-client-key", "TLS_CLIENT_KEY", type=Path, help="its key")
    flag(p, "--tls-server-name", "TLS_SERVER_NAME", help="name expected in server certificates, when not the dialled host")


def server_tls(args: argparse.Namespace, p: argparse.ArgumentParser) -> ServerTLS:
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    callers = frozenset(c.strip() for c in args.tls_allowed_callers.split(",") if c.strip())
    if (args.tls_client_ca or callers) and args.tls_cert is None:
        p.error("--tls-client-ca and --tls-allowed-callers need --tls-cert/--tls-key")
    if callers and args.tls_client_ca is None:
        p.error("--tls-allowed-callers needs --tls-client-ca: identities come from client certificates")
    return ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca, callers)


def client_tls(args: argparse.Namespace, p: argparse.ArgumentParser) -> ClientTLS:
    if (args.tls_client_cert is None) != (args.tls_client_key is None):
        p.error("--tls-client-cert and --tls-client-key go together")
    if args.tls_client_cert is not None and args.tls_ca is None:
        p.error("--tls-client-cert needs --tls-ca")
    return ClientTLS(args.tls_ca, args.tls_client_cert, args.tls_client_key, args.tls_server_name)


def add_port(server, address: str, tls: ServerTLS | None, component: str) -> int:
    """Listen on `address` with TLS when configured, else in plaintext, loudly."""
    if tls is not None and tls.enabled:
        port = server.add_secure_port(address, tls.credentials())
        log.info("listening with TLS", extra={"fields": {"component": component, "mtls": tls.client_ca is not None,
                                                          "allowed_callers": sorted(tls.allowed_callers)}})
        return port
    log.warning("PLAINTEXT: no TLS certificate configured (--tls-cert/--tls-key); traffic, tokens and profiles "
                "cross the network unencrypted. Fine on loopback for development only.",
                extra={"fields": {"component": component, "address": address}})
    return server.add_insecure_port(address)


def caller_identities(context) -> set[str]:
    """The common name and DNS names of the client certificate of this call (empty without one)."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name", []) + auth.get("x509_subject_alternative_name", [])
    return {n.decode() if isinstance(n, bytes) else n for n in names}
