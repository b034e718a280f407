"""Kubernetes' own rules for names, label keys and values, annotation keys, env var names and
tolerations, as the API server applies them; each check returns its problems in words.

Ported from k8s.io/apimachinery (pkg/util/validation/validation.go and pkg/api/validate/content/
{dns,kube}.go, commit eed236ce) and k8s.io/kubernetes (pkg/apis/core/validation/validation.go:
ValidateTolerations, ValidateServiceName, ValidateNamespaceName, ValidateAnnotations). Where a
cluster may run with a relaxed rule behind a feature gate (RelaxedEnvironmentVariableValidation,
RelaxedServiceNameValidation), the strict rule is kept: every cluster accepts it.

A leaf module (no project imports), so the config rules and the Kubernetes plan share it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
LABEL_KEY_NAME_MAX = 63
# A StatefulSet's pods carry `controller-revision-hash: <name>-<10-character hash>`, a label value
# (<= 63): a longer name creates no pod at all (kubernetes/kubernetes#64023).
STATEFULSET_NAME_MAX = LABEL_VALUE_MAX - 1 - 10
ANNOTATIONS_TOTAL_MAX = 256 * 1024  # TotalAnnotationSizeLimitB, apimachinery pkg/api/validation

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + ")*"
_DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"
_LABEL_KEY_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = "(" + _LABEL_KEY_NAME + ")?"
_ENV_VAR_NAME = "[-._a-zA-Z][-._a-zA-Z0-9]*"


def _size(value: str) -> int:
    return len(value.encode())  # Kubernetes counts bytes


def _max_len(n: int) -> str:
    return f"must be no more than {n} characters"


def _matches(fmt: str, value: str) -> bool:
    return re.fullmatch(fmt, value, flags=re.ASCII) is not None


def _length_and_form(value: str, limit: int, fmt: str, form: str) -> list[str]:
    """apimachinery's usual pair of checks: MaxLenError, then RegexError."""
    errs = [_max_len(limit)] if _size(value) > limit else []
    if not _matches(fmt, value):
        errs.append(f"{form} (regex '{fmt}')")
    return errs


def dns1123_label(value: str) -> list[str]:
    """IsDNS1123Label: namespaces, pod host names."""
    errs = [_max_len(DNS1123_LABEL_MAX)] if _size(value) > DNS1123_LABEL_MAX else []
    if not _matches(_DNS1123_LABEL, value):
        errs.append("must not contain dots" if _matches(_DNS1123_SUBDOMAIN, value) else
                    f"must consist of lower case alphanumeric characters or '-', and must start and end with an "
                    f"alphanumeric character (regex '{_DNS1123_LABEL}')")
    return errs


def dns1123_subdomain(value: str) -> list[str]:
    """IsDNS1123Subdomain: the names of most objects, storage class names, label key prefixes."""
    return _length_and_form(value, DNS1123_SUBDOMAIN_MAX, _DNS1123_SUBDOMAIN, "must consist of lower case alphanumeric "
                            "characters, '-' or '.', and must start and end with an alphanumeric character")


def dns1035_label(value: str) -> list[str]:
    """IsDNS1035Label: Service names (ValidateServiceName)."""
    return _length_and_form(value, DNS1123_LABEL_MAX, _DNS1035_LABEL, "must consist of lower case alphanumeric "
                            "characters or '-', start with an alphabetic character, and end with an alphanumeric character")


def statefulset_name(value: str) -> list[str]:
    """A subdomain short enough for the revision label of its pods (STATEFULSET_NAME_MAX)."""
    errs = dns1123_subdomain(value)
    if not errs and _size(value) > STATEFULSET_NAME_MAX:
        errs.append(f"must be no more than {STATEFULSET_NAME_MAX} characters, or its pods' controller-revision-hash "
                    "label (the name, '-' and a 10-character hash) exceeds 63")
    return errs


def qualified_name(value: str) -> list[str]:
    """IsQualifiedName (content.IsLabelKey): label keys, toleration keys, annotation keys."""
    parts = value.split("/")
    if len(parts) > 2:
        return ["must be a name with an optional DNS subdomain prefix and one '/' (e.g. 'example.com/MyName')"]
    errs: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        errs += ["prefix part must be non-empty"] if not prefix else [f"prefix part {e}" for e in dns1123_subdomain(prefix)]
    if not name:
        errs.append("name part must be non-empty")
    return errs + [f"name part {e}" for e in _length_and_form(
        name, LABEL_KEY_NAME_MAX, _LABEL_KEY_NAME,
        "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")]


def label_value(value: str) -> list[str]:
    """IsValidLabelValue: label values, node selector values, toleration values."""
    return _length_and_form(value, LABEL_VALUE_MAX, _LABEL_VALUE, "must be empty or consist of alphanumeric "
                            "characters, '-', '_' or '.', and must start and end with an alphanumeric character")


def annotation_key(value: str) -> list[str]:
    """ValidateAnnotations checks the key lower-cased, so an upper-case prefix passes."""
    return qualified_name(value.lower())


def env_var_name(value: str) -> list[str]:
    """IsEnvVarName, with its check against '.', '..' and a '..' prefix (hasChDirPrefix)."""
    errs = [] if _matches(_ENV_VAR_NAME, value) else [
        f"must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (regex '{_ENV_VAR_NAME}')"]
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def toleration(key: Optional[str], operator: str, value: Optional[str]) -> list[tuple[str, str]]:
    """ValidateTolerations: (field, problem) pairs, the field being `key`, `operator` or `value`."""
    errs = [("key", e) for e in qualified_name(key)] if key else []
    if not key and operator != "Exists":
        errs.append(("operator", "operator must be Exists when `key` is empty, which means \"match all values and all keys\""))
    if operator == "Exists" and value:
        errs.append(("value", "value must be empty when `operator` is 'Exists'"))
    if operator == "Equal":
        errs += [("value", e) for e in label_value(value or "")]
    return errs


@dataclass(frozen=True)
class Rule:
    """One of the rules above, with what it allows in words (for an error's `Allowed:`)."""

    check: Callable[[str], list[str]]
    allowed: str

    def __call__(self, value: str) -> list[str]:
        return self.check(value)


DNS_LABEL = Rule(dns1123_label, "a DNS-1123 label: at most 63 lowercase letters, digits or '-', starting and ending "
                                "with a letter or digit")
DNS_SUBDOMAIN = Rule(dns1123_subdomain, "a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' or '.', "
                                        "starting and ending with a letter or digit")
SERVICE_NAME = Rule(dns1035_label, "a DNS-1035 label: at most 63 lowercase letters, digits or '-', starting with a "
                                   "letter and ending with a letter or digit")
STATEFULSET_NAME = Rule(statefulset_name, f"a DNS-1123 subdomain of at most {STATEFULSET_NAME_MAX} characters "
                                          "(lowercase letters, digits, '-' or '.', starting and ending with a letter or digit)")
LABEL_KEY = Rule(qualified_name, "a label key: an optional DNS-1123 subdomain and '/', then a name of at most 63 "
                                 "letters, digits, '-', '_' or '.', starting and ending with a letter or digit "
                                 "(e.g. nvidia.com/gpu.product)")
ANNOTATION_KEY = Rule(annotation_key, LABEL_KEY.allowed.replace("a label key", "an annotation key"))
LABEL_VALUE = Rule(label_value, "a label value: empty, or at most 63 letters, digits, '-', '_' or '.', starting and "
                                "ending with a letter or digit")
ENV_VAR_NAME = Rule(env_var_name, "an environment variable name: letters, digits, '_', '-' or '.', not starting with "
                                  "a digit and not '.', '..' or '..'-prefixed (e.g. MY_VAR)")
