"""Runs the real Pulumi program (`__main__.py`) for a stack under Pulumi's official mocks.

No Pulumi CLI, engine or provider is involved: the mocks record every resource the program
registers, with its inputs. Used by the offline render (`make render`) and by the tests.
"""
from __future__ import annotations

import asyncio
import datetime
import functools
import json
import os
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pulumi.runtime import mocks, rpc, settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from fleet.config.errors import PROJECT
from fleet.config.load import StackFile, StackFileError, read_stack_yaml
from fleet.config.schema import TLS_SECRET_KEYS

ROOT = Path(__file__).resolve().parent.parent
SECRET_MARK = "[secret]"
MOCK_GENERATED_PASSWORD = "mock-generated-grafana-password-0000"


@dataclass
class Recorded:
    typ: str
    name: str
    inputs: dict[str, Any]
    provider: str = ""  # the provider reference ("urn::id"): which Docker host a container is on
    urn: str = ""
    dependencies: list[str] = field(default_factory=list)  # URNs this resource waits for
    # input property -> URNs whose outputs it uses (a subset of `dependencies`; `depends_on` adds none)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    delete_before_replace: bool = False
    delete_before_replace_defined: bool = False  # False: the provider's default applies
    replace_on_changes: list[str] = field(default_factory=list)
    retain_on_delete: bool = False
    create_timeout: str = ""  # customTimeouts.create, e.g. "600s"
    delete_timeout: str = ""
    update_timeout: str = ""

    @property
    def provider_name(self) -> str:
        return self.provider.split("::")[-2] if self.provider else ""

    def plain(self) -> dict[str, Any]:
        """Inputs with secret values replaced by a marker."""
        return redact(self.inputs)


@dataclass
class MockRun:
    stack: str
    resources: list[Recorded] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]

    def named(self, name: str) -> Recorded:
        return next(r for r in self.resources if r.name == name)

    def containers(self) -> dict[str, Recorded]:
        """docker containers by their container name (a one-shot container, autonamed by Docker's
        provider at deploy time, by its resource name)."""
        return {r.inputs.get("name", r.name): r for r in self.of_type("docker:index/container:Container")}


def redact(value: Any) -> Any:
    if rpc.is_rpc_secret(value):
        return SECRET_MARK
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def is_secret(value: Any) -> bool:
    return rpc.is_rpc_secret(value)


class RecordingMonitor(mocks.MockMonitor):
    """Also keeps what the mocks API leaves out: dependencies and delete-before-replace."""

    def __init__(self, run_mocks: "FleetMocks") -> None:
        super().__init__(run_mocks)
        self.requests: dict[str, Any] = {}

    def RegisterResource(self, request):
        urn = self.make_urn(request.parent, request.type, request.name)
        if urn in self.requests:
            # The engine refuses a second resource with one URN (step_generator.go, diag 2001 in pkg/diag/errors.go);
            # Pulumi's mocks would accept it.
            raise DuplicateUrn(f"Duplicate resource URN '{urn}'; try giving it a unique name")
        self.requests[urn] = request
        return super().RegisterResource(request)


class DuplicateUrn(Exception):
    pass


class FleetMocks(pulumi.runtime.Mocks):
    def __init__(self, run: MockRun) -> None:
        self.run = run

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.run.resources.append(Recorded(args.typ, args.name, dict(args.inputs), args.provider or ""))
        state = dict(args.inputs)
        if args.typ == "docker:index/remoteImage:RemoteImage":
            state["imageId"] = f"{args.inputs['name']}@sha256:{'0' * 64}"
        if args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = MOCK_GENERATED_PASSWORD
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


def read_stack_file(stack: str, stacks_dir: Path = ROOT / "stacks") -> dict[str, Any]:
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.exists():
        known = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in stacks_dir.glob("Pulumi.*.yaml"))
        raise SystemExit(f"no stack `{stack}`: {path} does not exist (stacks: {', '.join(known)})")
    return read_stack_yaml(path)


def stack_config(doc: dict[str, Any], passphrase: Optional[str]) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """Pulumi's config map, its secret keys and the decrypted secret values, from a stack file.

    Without the passphrase, secrets get a stand-in value: they are redacted from every output anyway.
    A passphrase that does not decrypt them is one `StackFileError`, as `pulumi up` refuses it.
    """
    config, secret_keys, plain = {}, [], {}
    cipher = None
    where = doc.where if isinstance(doc, StackFile) else (lambda key=None: "(stack file)")
    stack = doc.stack if isinstance(doc, StackFile) else "?"
    if passphrase and doc.get("encryptionsalt"):
        from pulumi_crypto import PassphraseCipher, PulumiCryptoError

        try:
            cipher = PassphraseCipher(passphrase, salt_state=doc["encryptionsalt"])
        except PulumiCryptoError:
            raise StackFileError(where(), f"PULUMI_CONFIG_PASSPHRASE does not decrypt the secrets of stack `{stack}` "
                                 "(it does not match the file's `encryptionsalt`)",
                                 "the passphrase the stack's secrets were encrypted with",
                                 "set PULUMI_CONFIG_PASSPHRASE to this stack's passphrase (its header comment names "
                                 "the example stacks' one), or unset it to render with stand-in secrets") from None
    for key, value in (doc.get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            text = _decrypt(cipher, key, value["secure"], where) if cipher else _stand_in(key.split(":")[-1])
            config[key], plain[key] = text, text
            secret_keys.append(key)
        elif _has_secure(value):
            # `pulumi config set --secret --path 'a.b'`: secure leaves inside an object make the whole key a secret.
            def leaf(v: Any, path: str) -> Any:
                if isinstance(v, dict) and set(v) == {"secure"}:
                    text = _decrypt(cipher, key, v["secure"], where) if cipher else f"unreadable-secret-{path}-" + "x" * 32
                    plain[f"{key}.{path}"] = text
                    return text
                if isinstance(v, dict):
                    return {k: leaf(x, f"{path}.{k}" if path else k) for k, x in v.items()}
                return [leaf(x, f"{path}[{i}]") for i, x in enumerate(v)] if isinstance(v, list) else v
            config[key] = json.dumps(leaf(value, ""))
            secret_keys.append(key)
        else:
            config[key] = value if isinstance(value, str) else json.dumps(value)
    return config, secret_keys, plain


def _stand_in(name: str) -> str:
    """An unreadable secret's value, in a form its checks accept (a PEM pair for the TLS ones)."""
    return _stand_in_tls()[name] if name in TLS_SECRET_KEYS else f"unreadable-secret-{name}"


@functools.lru_cache(maxsize=None)
def _stand_in_tls() -> dict[str, str]:
    """A self-signed certificate and its key, made once per run: fleet.config.rules reads the TLS
    secrets as PEM, so an unreadable one needs a stand-in that is one."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {"tls_certificate": cert.public_bytes(pem).decode(),
            "tls_private_key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()).decode()}


def _has_secure(value: Any) -> bool:
    if isinstance(value, dict):
        return set(value) == {"secure"} or any(_has_secure(v) for v in value.values())
    return isinstance(value, list) and any(_has_secure(v) for v in value)


def _decrypt(cipher: Any, key: str, ciphertext: Any, where: Any) -> str:
    from pulumi_crypto import PulumiCryptoError

    try:
        return cipher.decrypt(str(ciphertext))
    except PulumiCryptoError:
        raise StackFileError(where(key), f"the secret `{key}` does not decrypt with this stack's passphrase "
                             "(encrypted for another stack, or damaged)",
                             "a value encrypted by `pulumi config set --secret` in this stack",
                             f"set it again: `pulumi config set --secret {key.split(':', 1)[-1]}`") from None


def _ensure_event_loop() -> None:
    """Pulumi's runtime runs on the thread's current event loop; something that ran before in this
    process (`asyncio.run()` in a test, a client library) may have left it closed or unset."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
        if not loop.is_closed():
            return
    except RuntimeError:
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(stack: str, config: dict[str, str], secret_keys: list[str] = (),
                run: Optional[MockRun] = None) -> MockRun:
    """Execute `__main__.py` for `stack` with `config` (full keys, e.g. `vllm-fleet:models`).

    Pass `run` to keep what was registered even when the program raises.
    """
    _ensure_event_loop()
    run = run or MockRun(stack)
    pulumi.runtime.set_all_config(dict(config), list(secret_keys))
    settings.set_root_resource(None)
    monitor = RecordingMonitor(FleetMocks(run))
    mocks.set_mocks(monitor.mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        _sync_await(run_pulumi_func(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")))
    finally:
        os.chdir(cwd)
    by_key = {(req.type, req.name): (urn, req) for urn, req in monitor.requests.items()}
    for r in run.resources:
        r.urn, request = by_key.get((r.typ, r.name), ("", None))
        if request is not None:
            r.dependencies = list(request.dependencies)
            r.property_dependencies = {k: list(v.urns) for k, v in request.propertyDependencies.items() if v.urns}
            r.delete_before_replace = request.deleteBeforeReplace
            r.delete_before_replace_defined = request.deleteBeforeReplaceDefined
            r.replace_on_changes = list(request.replaceOnChanges)
            r.retain_on_delete = request.retainOnDelete
            if request.HasField("customTimeouts"):
                t = request.customTimeouts
                r.create_timeout, r.update_timeout, r.delete_timeout = t.create, t.update, t.delete
    root = settings.get_root_resource()
    run.outputs = _stack_outputs(root)
    return run


def _stack_outputs(root: Any) -> dict[str, Any]:
    outputs = getattr(root, "outputs", None) or {}
    resolved = {}
    for key, value in outputs.items():
        out = pulumi.Output.from_input(value)
        secret = _sync_await(out.is_secret())
        resolved[key] = SECRET_MARK if secret else _sync_await(out.future(with_unknowns=True))
    return resolved
