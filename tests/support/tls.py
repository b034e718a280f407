"""A test certificate authority and server certificates made in the test (cryptography), for the
TLS listener: PEM text as `pulumi config set --secret tls_certificate < fullchain.pem` stores it."""
from __future__ import annotations

import datetime
import functools
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pair:
    certificate: str  # the server's certificate, then the CA's (a full chain)
    private_key: str
    ca: str  # what a client trusts

    @property
    def secrets(self) -> dict[str, str]:
        return {"tls_certificate": self.certificate, "tls_private_key": self.private_key}


def _pem_key(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> str:
    algorithm = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm).decode()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@functools.lru_cache(maxsize=None)
def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vllm-fleet test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


@functools.lru_cache(maxsize=None)
def server_pair(host: str = "localhost", *, valid_from_days: int = -1, valid_for_days: int = 30) -> Pair:
    """A server certificate for `host` (and 127.0.0.1) signed by the test CA, with its key."""
    ca_key, ca = _ca()
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.datetime.now(datetime.timezone.utc) + valid_from_days * DAY
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + valid_for_days * DAY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Pair(_pem(cert) + _pem(ca), _pem_key(key), _pem(ca))


def encrypted_key(pair: Pair) -> str:
    """`pair`'s key, encrypted with a passphrase (Nginx would prompt for it)."""
    key = serialization.load_pem_private_key(pair.private_key.encode(), password=None)
    return _pem_key(key, b"passphrase")
