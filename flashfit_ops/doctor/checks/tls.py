"""TLS certificate expiry (warn under 21 days, fail when expired), when TLS is configured; the
key must match the certificate, and nginx should serve the file's certificate."""

from __future__ import annotations

import socket
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, OK, WARNING, Finding, combine, failure, ok

WARN_DAYS = 21
RENEW_HINT = "renew the certificate (certbot renew, or your CA), install it at tls.certificate, then `flashfit deploy`"


def load_certificate(data: bytes) -> Any:
    from cryptography import x509

    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def not_after(cert: Any) -> datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    if value is None:  # cryptography < 42
        value = cert.not_valid_after.replace(tzinfo=timezone.utc)
    return value


def evaluate_expiry(cert: Any, now: datetime, label: str = "certificate") -> tuple[str, str, str | None, dict]:
    expires = not_after(cert)
    left = expires - now
    subject = cert.subject.rfc4514_string()
    details = {"subject": subject, "not_after": expires.isoformat(), "days_left": round(left / timedelta(days=1), 1)}
    if left <= timedelta(0):
        return FAILURE, f"{label} expired on {expires:%Y-%m-%d} ({-left.days} days ago)", RENEW_HINT, details
    if left < timedelta(days=WARN_DAYS):
        return WARNING, f"{label} expires in {left.days} days ({expires:%Y-%m-%d})", RENEW_HINT, details
    return OK, f"{label} valid until {expires:%Y-%m-%d} ({left.days} days)", None, details


def key_matches(cert: Any, key_data: bytes) -> bool:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_data, password=None)
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*der) == cert.public_key().public_bytes(*der)


def served_certificate(port: int, timeout: float = 2.0) -> bytes | None:
    """The certificate nginx presents on 127.0.0.1:port (DER), or None when nothing answers TLS."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with context.wrap_socket(raw) as tls:
                return tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def evaluate(cert_data: bytes, key_data: bytes | None, served: bytes | None, now: datetime) -> Finding:
    from cryptography.hazmat.primitives import serialization

    cert = load_certificate(cert_data)
    status, message, hint, details = evaluate_expiry(cert, now)
    parts: list[tuple[str, str, str | None]] = [(status, message, hint)]
    if key_data is not None:
        try:
            if not key_matches(cert, key_data):
                parts.append((FAILURE, "the private key does not belong to the certificate",
                              "install the key that was issued with this certificate (tls.key)"))
        except (ValueError, TypeError) as error:
            parts.append((FAILURE, f"the private key is unreadable: {error}", "tls.key must be an unencrypted PEM key"))
    if served is not None:
        mine = cert.public_bytes(serialization.Encoding.DER)
        details["served_matches_file"] = served == mine
        if served != mine:
            s_status, s_message, s_hint, s_details = evaluate_expiry(load_certificate(served), now, "served certificate")
            details["served"] = s_details
            parts.append((WARNING, "nginx serves another certificate than tls.certificate",
                          "`flashfit deploy` reloads the proxy with the new certificate"))
            if s_status != OK:
                parts.append((s_status, s_message, s_hint))
    return combine(parts, message, **details)


@check("tls", "TLS certificate expiry when TLS is configured", timeout=10.0)
def tls(ctx: DoctorContext) -> Finding:
    config = ctx.config.tls
    if not config.enabled:
        return ok("TLS is not configured (tls.enabled: false)")
    if not config.certificate:
        return failure("TLS is enabled but tls.certificate is not set", "set tls.certificate and tls.key")
    path = ctx.config.resolve_path(config.certificate)
    try:
        cert_data = Path(path).read_bytes()
    except OSError as error:
        return failure(f"cannot read the certificate {path}: {error.strerror or error}", "install it at tls.certificate")
    key_data = None
    if config.key:
        try:
            key_data = ctx.config.resolve_path(config.key).read_bytes()
        except OSError as error:
            return failure(f"cannot read the private key: {error.strerror or error}", "install it at tls.key")
    try:
        finding = evaluate(cert_data, key_data, served_certificate(ctx.config.ports.https), ctx.now())
    except ValueError as error:
        return failure(f"{path} is not a certificate: {error}", "tls.certificate must be a PEM (or DER) X.509 certificate")
    finding.details["file"] = str(path)
    return finding
