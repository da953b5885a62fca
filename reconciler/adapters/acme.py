"""An ACME client (RFC 8555) over the certbot team's ``acme`` and ``josepy``: an account, and one order per host
answered over HTTP-01.

Guarantees:
- ``Acme.account`` restores the account it is given (its key and URL) and registers none then; without one
  it registers a new account (EC P-256 key, terms agreed, the email as contact) and returns it to be stored.
- ``Acme.order`` orders a certificate for one host with a fresh EC P-256 key: each HTTP-01 challenge is
  handed to ``answer`` (token, key authorization) before the server is told to check it, and ``withdraw``
  takes it back whatever happens. It returns the full chain and key as one PEM (what HAProxy loads), with
  its validity and serial.
- ``Acme.renewal`` asks the server's ARI (``renewalInfo``) for when to renew, when the directory offers it;
  None otherwise (the caller renews at two thirds of the lifetime).
- Every failure is one ``AcmeFailed`` whose text names the cause and no secret: the server that does not
  answer, a TLS certificate not trusted (``ca_file``), the challenge that failed and why (the server's own
  words), a ``rateLimited`` answer with its ``Retry-After`` (``retry_after``, epoch seconds).
- ``ca_file`` verifies the ACME server's own TLS; without it the system's trust store does.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import DeserializationError
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from reconciler.errors import ReconcileError

USER_AGENT = "reconciler (acme-python)"
TIMEOUT = 30  # seconds for one request to the ACME server
ORDER_DEADLINE = 90.0  # seconds for one order's challenges and finalization


class AcmeFailed(ReconcileError):
    """An order (or the account) that failed; ``retry_after``: when the server asked to be asked again."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Account:
    """An ACME account as it is stored: its private key (PEM) and the server's resource for it (JSON)."""

    key_pem: bytes
    resource: str


@dataclass(frozen=True)
class Certificate:
    """A certificate as HAProxy loads it (full chain, then key) and what is known of it."""

    pem: bytes
    not_before: float
    not_after: float
    serial: str


def new_key() -> bytes:
    return _private(ec.generate_private_key(ec.SECP256R1()))


def _private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed(name: str = "reconciler.invalid") -> bytes:
    """A self-signed certificate and its key, one PEM: what the proxy serves to a name no certificate serves
    (``.invalid`` never names a real host), so that HTTPS answers while ACME has not issued yet."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + _private(key)


def read_certificate(pem: bytes) -> x509.Certificate:
    """The first certificate of a PEM (the leaf of a full chain)."""
    return x509.load_pem_x509_certificate(pem)


def names_of(pem: bytes) -> list[str]:
    """The DNS names a PEM's first certificate serves (its SANs; its CN when it has none)."""
    cert = read_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return [str(common[0].value).lower()] if common else []


class _Network(client.ClientNetwork):
    """``ClientNetwork`` that keeps the last answer's headers: a ``rateLimited`` problem's ``Retry-After``."""

    last_headers: dict[str, str]

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_headers = dict(response.headers)
        return response


class Acme:
    """One ACME directory, with one account (see the module docstring)."""

    def __init__(self, directory: str, *, ca_file: str | None = None, timeout: int = TIMEOUT) -> None:
        self.directory_url = directory
        self.ca_file = ca_file
        self.timeout = timeout
        self._client: client.ClientV2 | None = None
        self._net: _Network | None = None

    def account(self, email: str, stored: Account | None) -> Account:
        """Use ``stored`` (registering nothing), else register a new account; the account either way (a new one
        when the server no longer knows the stored one)."""
        with self._failures():
            if stored is not None:
                key = JWKEC.load(stored.key_pem)
                resource = messages.RegistrationResource.json_loads(stored.resource)
                acme = self._connect(key, resource)
                try:
                    acme.query_registration(resource)
                    return stored
                except messages.Error as exc:
                    if exc.code != "accountDoesNotExist":
                        raise
                # The server forgot it (a test CA restarted, an account deactivated): a new one, stored anew.
            key_pem = new_key()
            key = JWKEC.load(key_pem)
            acme = self._connect(key, None)
            registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
            try:
                resource = acme.new_account(registration)
            except errors.ConflictError as exc:  # the key is known already: that account
                resource = acme.query_registration(messages.RegistrationResource(uri=exc.location))
            assert self._net is not None
            self._net.account = resource
            return Account(key_pem, resource.json_dumps())

    def _connect(self, key: JWK, resource: messages.RegistrationResource | None) -> client.ClientV2:
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise AcmeFailed(f"tls.acme.ca_file {self.ca_file}: no such file on this server")
        verify: Any = self.ca_file if self.ca_file else True  # requests takes a bundle's path as well as a flag
        net = _Network(key, account=resource, alg=ES256, verify_ssl=verify, user_agent=USER_AGENT,
                       timeout=self.timeout)  # fmt: skip
        net.last_headers = {}
        directory = client.ClientV2.get_directory(self.directory_url, net)
        self._net, self._client = net, client.ClientV2(directory, net=net)
        return self._client

    def order(
        self,
        host: str,
        *,
        answer: Callable[[str, str], None],
        withdraw: Callable[[str], None],
        deadline: float = ORDER_DEADLINE,
    ) -> Certificate:
        """A certificate for ``host`` (see the module docstring); ``account`` first."""
        assert self._client is not None and self._net is not None, "account() first"
        acme, net = self._client, self._net
        key_pem = new_key()
        with self._failures(host):
            order = acme.new_order(crypto_util.make_csr(key_pem, [host]))
            tokens: list[str] = []
            try:
                for authorization in order.authorizations:
                    if authorization.body.status == messages.STATUS_VALID:
                        continue  # proved recently: the server remembers it
                    challenge = next(
                        (c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01)), None
                    )
                    if challenge is None:
                        raise AcmeFailed(f"{host}: the ACME server offers no HTTP-01 challenge for it")
                    response, validation = challenge.response_and_validation(net.key)
                    token = challenge.chall.encode("token")
                    answer(token, validation)
                    tokens.append(token)
                    acme.answer_challenge(challenge, response)
                when = datetime.datetime.now() + datetime.timedelta(seconds=deadline)
                order = acme.poll_and_finalize(order, deadline=when)
            finally:
                for token in tokens:
                    withdraw(token)
        chain = order.fullchain_pem.encode()
        leaf = read_certificate(chain)
        return Certificate(
            pem=chain.rstrip(b"\n") + b"\n" + key_pem,
            not_before=leaf.not_valid_before_utc.timestamp(),
            not_after=leaf.not_valid_after_utc.timestamp(),
            serial=format(leaf.serial_number, "X"),
        )

    def renewal(self, pem: bytes) -> float | None:
        """When the server's ARI says to renew this certificate (epoch seconds); None when it offers no ARI or
        its answer cannot be had now (the caller's two thirds stand)."""
        if self._client is None:
            return None
        try:
            self._client.directory["renewalInfo"]
        except KeyError:
            return None
        try:
            when, _ = self._client.renewal_time(pem)
        except (errors.Error, requests.RequestException, ValueError):
            return None
        return when.timestamp() if when is not None else None

    @contextmanager
    def _failures(self, host: str = "") -> Iterator[None]:
        """Every failure of the ACME exchange as one ``AcmeFailed`` naming its cause."""
        where = f"{host}: " if host else ""
        url = self.directory_url
        try:
            yield
        except AcmeFailed:
            raise
        except requests.exceptions.SSLError as exc:
            hint = f" (ca_file {self.ca_file})" if self.ca_file else "; set tls.acme.ca_file for a private ACME server"
            raise AcmeFailed(f"{where}the ACME server {url} is not trusted: {_reason(exc)}{hint}") from None
        except requests.exceptions.Timeout:
            raise AcmeFailed(f"{where}the ACME server {url} did not answer within {self.timeout} s") from None
        except requests.exceptions.ConnectionError as exc:
            raise AcmeFailed(f"{where}the ACME server {url} does not answer ({_reason(exc)})") from None
        except requests.RequestException as exc:
            raise AcmeFailed(f"{where}the ACME server {url}: {_reason(exc)}") from None
        except errors.ValidationError as exc:
            raise AcmeFailed(f"{where}the HTTP-01 challenge failed: {_challenge_error(exc)}") from None
        except errors.TimeoutError:
            raise AcmeFailed(f"{where}the order did not finish within {ORDER_DEADLINE:.0f} s") from None
        except messages.Error as exc:
            retry = self._retry_after() if exc.code == "rateLimited" else None
            said = exc.detail or exc.description or exc.typ
            then = f"; the server asks to wait until {_moment(retry)}" if retry is not None else ""
            raise AcmeFailed(f"{where}{exc.code or exc.typ}: {said}{then}", retry_after=retry) from None
        except errors.ClientError as exc:
            raise AcmeFailed(f"{where}the ACME server {url} answered what is not ACME ({_reason(exc)})") from None
        except (errors.Error, DeserializationError, ValueError) as exc:
            raise AcmeFailed(f"{where}the ACME exchange failed: {_reason(exc)}") from None

    def _retry_after(self) -> float | None:
        value = (self._net.last_headers if self._net is not None else {}).get("Retry-After")
        if not value:
            return None
        if value.strip().isdigit():
            return time.time() + int(value)
        try:
            return parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None


def _challenge_error(exc: errors.ValidationError) -> str:
    """The server's own words on why a challenge failed (the validation error of the first failed one)."""
    for authorization in exc.failed_authzrs:
        for challenge in authorization.body.challenges:
            error = challenge.error
            if error is not None:
                return f"{error.code or error.typ}: {error.detail or error.description}"
    return "the server gave no reason"


def _reason(exc: BaseException) -> str:
    """The cause of a requests error in a few words (``Connection refused``, ``certificate verify failed``), not
    its wrappers' reprs."""
    text = str(exc)
    for marker in _CAUSES:
        if marker in text:
            return marker
    return text.splitlines()[0][:300] if text else type(exc).__name__


_CAUSES = ("Connection refused", "certificate verify failed", "Name or service not known", "No route to host",
           "timed out", "Connection reset")  # fmt: skip


def _moment(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def account_json(account: Account) -> str:
    return json.dumps({"key": account.key_pem.decode(), "resource": account.resource})


def account_from_json(text: str) -> Account | None:
    try:
        data = json.loads(text)
        return Account(str(data["key"]).encode(), str(data["resource"]))
    except (ValueError, KeyError, TypeError):
        return None
