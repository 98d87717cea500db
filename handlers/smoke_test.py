"""Smoke tests: one HTTP GET against a service, through its load balancer, whose status decides whether a
deployment goes on (Lambda entry point ``handlers.smoke_test.handler``; standard library and boto3 only).

Why: ECS's health checks only say a task answers *its* health check port; they do not say the new revision serves
what users ask for through the load balancer, with its rules, host names and certificates. A smoke test asks that,
and it asks before production traffic reaches the new revision wherever the strategy allows it:

* **ECS-native blue-green / canary / linear**: an ECS lifecycle hook at ``POST_TEST_TRAFFIC_SHIFT`` invokes this
  function once the new revision has all of the *test* listener's traffic and none of production's. The payload's
  ``hookDetails`` are the hook's custom parameters, set by crossdeploy to the service's :meth:`SmokeSpec.to_json`.
  The answer is ``{"hookStatus": "SUCCEEDED"}`` or ``{"hookStatus": "FAILED"}``; FAILED makes ECS roll back. A
  malformed or foreign payload is answered FAILED with a logged reason, never with an exception.
* **CodeDeploy blue/green** (``codedeploy`` environments): the ``AfterAllowTestTraffic`` hook, same check; the
  verdict goes to ``PutLifecycleEventHookExecutionStatus``. The spec comes from ``SMOKE_TESTS`` (deployment group
  name -> spec) and the deployment must belong to ``CODEDEPLOY_APPLICATION``. Whatever goes wrong once the two ids
  are known is reported ``Failed`` (an unanswered hook keeps CodeDeploy waiting for an hour); only a payload without
  them cannot be answered, and is logged.
* **Rolling**: the deploy engine calls :func:`check` itself, against the public production listener after the
  deployment; nothing here is involved but that function.

Where the hook connects (``LOAD_BALANCER``, ``TEST_PORT``, ``PROTOCOL``): the function runs in the VPC's private
subnets and the ALB is internet-facing, so the ALB's DNS name resolves to public addresses that the function would
reach only through NAT, where the security group rule admitting the hook's own security group would no longer
match. So it connects to the ALB's **private** addresses, which ELB's network interfaces carry (ELB describes each
as ``ELB app/<name>/<id>``), rotating through them across attempts. IAM: ``ec2:DescribeNetworkInterfaces`` and, for
CodeDeploy, ``codedeploy:GetDeployment`` and ``codedeploy:PutLifecycleEventHookExecutionStatus``.

The check (:func:`check`): ``GET path`` with ``Host: host`` when the service is routed by host name; redirects are
not followed (the status *is* the verdict), at most a small body is read, every attempt is bounded by
``timeoutSeconds`` as a whole (connect, TLS, request, response), ``attempts`` tries with
:data:`ATTEMPT_DELAY_SECONDS` between them, and the first accepted status wins. HTTPS verifies the certificate chain
always, and the host name only when one is named (see :func:`tls_context`).

Logs: one JSON line per attempt (``smoke-test-attempt``) and one verdict line (``smoke-test``) with ``trigger``
(``ecs`` / ``codedeploy``), ``service``, ``revision`` or ``deployment``, ``result`` (``passed``, ``failed``, or
``refused`` for a payload that is not a hook's), ``reason`` and ``attempts``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import boto3

from handlers.ecs_common import ACCOUNT_ID, ECS_NAME, REGION, RETRY, Problems, log, show

MAX_ATTEMPTS = 10
MAX_TIMEOUT_SECONDS = 60
ATTEMPT_DELAY_SECONDS = 5  # long enough for a target that just failed its first request to recover, short overall
DEFAULT_EXPECT_STATUS = "200-399"  # redirects count as answers: the service is up and routing
DEFAULT_TIMEOUT_SECONDS = 10
DEFAULT_ATTEMPTS = 3
MAX_BODY_BYTES = 4096  # read so the server can finish a small answer; never more, a large body would only cost time
USER_AGENT = "crossdeploy-smoke-test/1"

ECS_STAGE = "POST_TEST_TRAFFIC_SHIFT"
HOOK_SUCCEEDED, HOOK_FAILED = "SUCCEEDED", "FAILED"
CODEDEPLOY_SUCCEEDED, CODEDEPLOY_FAILED = "Succeeded", "Failed"

# Environment variables of the hook function.
LOAD_BALANCER_ENV, TEST_PORT_ENV, PROTOCOL_ENV = "LOAD_BALANCER", "TEST_PORT", "PROTOCOL"
SMOKE_TESTS_ENV, CODEDEPLOY_APPLICATION_ENV = "SMOKE_TESTS", "CODEDEPLOY_APPLICATION"
ACCOUNT_ID_ENV, REGION_ENV = "ACCOUNT_ID", "AWS_REGION"  # AWS_REGION: set by the Lambda runtime

_KEYS = ("path", "expectStatus", "timeoutSeconds", "attempts", "host")
# Printable ASCII without spaces: what http.client would send unencoded (it refuses control characters anyway).
_PATH = re.compile(r"/[\x21-\x7e]{0,1023}")
_HOST = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_STATUS_ITEM = re.compile(r"([0-9]{3})(?:-([0-9]{3}))?")
_LOAD_BALANCER = re.compile(r"app/[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?/[0-9a-f]{16}")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_PROTOCOLS = ("HTTP", "HTTPS")
_ARN_HEAD = r"arn:(?P<partition>aws(?:-[a-z]+)*):ecs:(?P<region>[a-z0-9-]+):(?P<account>[0-9]{12}):"
_SERVICE_ARN = re.compile(_ARN_HEAD + rf"service/(?P<cluster>{ECS_NAME.pattern})/(?P<service>{ECS_NAME.pattern})")
_REVISION_ARN = re.compile(_ARN_HEAD + rf"service-revision/(?P<cluster>{ECS_NAME.pattern})/"
                                       rf"(?P<service>{ECS_NAME.pattern})/[A-Za-z0-9_-]{{1,255}}")
_ECS_KEYS = ("serviceArn", "targetServiceRevisionArn", "executionDetails", "hookDetails", "lifecycleStage")
_CODEDEPLOY_KEYS = ("DeploymentId", "LifecycleEventHookExecutionId")


# --- the spec ---------------------------------------------------------------------------------------------------


class SmokeTestError(ValueError):
    """A smoke test spec (or the hook's configuration) that cannot be run; names every problem at once."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def parse_status_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """``"200-299,301"`` -> ``((200, 299), (301, 301))``: comma-separated codes or ``low-high`` ranges, each 100-599.

    Raises ValueError with a message that reads well after a key path (the stack config validation uses it too):
    ``not HTTP status codes or ranges (100-599): '600'``."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string of HTTP status codes or ranges such as '200-399' or '200,204', "
                         f"got {show(text)}")
    ranges: list[tuple[int, int]] = []
    bad: list[str] = []
    backwards: list[str] = []
    for item in text.split(","):
        token = item.strip()
        match = _STATUS_ITEM.fullmatch(token)
        low, high = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
        if not (100 <= low <= 599 and 100 <= high <= 599):
            bad.append(show(token))
        elif low > high:
            backwards.append(show(token))
        else:
            ranges.append((low, high))
    messages = []
    if bad:
        messages.append(f"not HTTP status codes or ranges (100-599): {', '.join(bad)}")
    if backwards:
        messages.append(f"ranges must go from low to high: {', '.join(backwards)}")
    if messages:
        raise ValueError("; ".join(messages))
    return tuple(ranges)


def _spec_problems(data: Any, where: str) -> list[str]:
    problems = Problems()
    if not isinstance(data, dict):
        return [f"{where}: expected an object, got {show(data)}"]
    if "path" not in data:
        problems.add(where, "missing key 'path'")
    # Unknown keys are errors: a misspelt key must never silently fall back to a default.
    problems.items.extend(f"{where}: unknown key {key!r}" for key in data if key not in _KEYS)
    problems.string(data, "path", _PATH, where, "a request path starting with '/' (printable ASCII, no spaces, "
                                                "at most 1024 characters)")
    if "expectStatus" in data:
        try:
            parse_status_ranges(data["expectStatus"])
        except ValueError as exc:
            problems.add(f"{where}.expectStatus", str(exc))
    problems.integer(data, "timeoutSeconds", 1, MAX_TIMEOUT_SECONDS, where)
    problems.integer(data, "attempts", 1, MAX_ATTEMPTS, where)
    problems.string(data, "host", _HOST, where, "a DNS host name (no port, no wildcard)")
    return problems.items


@dataclass(frozen=True)
class SmokeSpec:
    """One service's smoke test (stack config ``services[].smokeTest``; ``host`` is added by crossdeploy when the
    service is routed by host name). Always valid: construction checks it."""

    path: str
    expect_status: str = DEFAULT_EXPECT_STATUS
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    attempts: int = DEFAULT_ATTEMPTS
    host: str | None = None

    def __post_init__(self) -> None:
        problems = _spec_problems(self.to_json(), "smokeTest")
        if problems:
            raise SmokeTestError(problems)

    @classmethod
    def from_json(cls, data: Any, where: str = "smokeTest") -> SmokeSpec:
        """Strict: exact keys (``path`` required), types and bounds; :class:`SmokeTestError` names every problem
        with its key (``smokeTest.attempts``, or ``where``) and value."""
        problems = _spec_problems(data, where)
        if problems:
            raise SmokeTestError(problems)
        return cls(path=data["path"], expect_status=data.get("expectStatus", DEFAULT_EXPECT_STATUS),
                   timeout_seconds=data.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS),
                   attempts=data.get("attempts", DEFAULT_ATTEMPTS), host=data.get("host"))

    def to_json(self) -> dict[str, Any]:
        """What :meth:`from_json` reads (every field, ``host`` only when set): the ECS hook's ``hookDetails``."""
        out: dict[str, Any] = {"path": self.path, "expectStatus": self.expect_status,
                               "timeoutSeconds": self.timeout_seconds, "attempts": self.attempts}
        if self.host is not None:
            out["host"] = self.host
        return out

    def accepts(self, status: int) -> bool:
        return any(low <= status <= high for low, high in parse_status_ranges(self.expect_status))


def worst_case_seconds(spec: SmokeSpec) -> int:
    """The longest :func:`check` can take: every attempt timing out, with the pauses between them (10 attempts of
    60 s is 645 s, inside Lambda's 900). The hook function's timeout must exceed it, with room for its AWS calls."""
    return spec.attempts * spec.timeout_seconds + (spec.attempts - 1) * ATTEMPT_DELAY_SECONDS


# --- the check --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str
    """One line: ``GET /orders/health -> 503, expected 200-399 (3 attempts)``."""
    attempts: list[dict[str, Any]]
    """Per attempt: ``attempt``, ``address``, ``status`` or ``error``, ``elapsedMs``."""


def tls_context(server_name: str | None) -> ssl.SSLContext:
    """The default trust store, chain always verified; the host name only when one is named.

    Why not always: the hook connects to the load balancer's private IP addresses, which no certificate names, so
    checking them against the certificate would fail every time; the chain is still verified, so a connection that
    is not TLS to a certificate from a trusted CA fails. With a name (the service's ``host``, or the engine's), it is
    sent as SNI, so the ALB picks that certificate, and the certificate must match it."""
    context = ssl.create_default_context()
    context.check_hostname = server_name is not None
    return context


def _open(host: str, port: int, deadline: float) -> socket.socket:
    """TCP connection to the first of ``host``'s addresses that answers, all of it before ``deadline`` (unlike
    socket.create_connection, which gives every address the whole timeout)."""
    error: OSError = TimeoutError()
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class _Connection(http.client.HTTPConnection):
    """One attempt's connection (TLS when ``tls`` is given), bounded as a whole by ``timeout``.

    Socket timeouts bound each read, not the attempt: a response trickling in byte by byte would outlast them. So a
    watchdog shuts the socket down at the deadline, which ends whatever read or TLS step is waiting. It shuts down a
    duplicate of the descriptor: the TLS wrapper takes the original over."""

    def __init__(self, address: str, port: int, timeout: int, tls: ssl.SSLContext | None,
                 server_name: str | None) -> None:
        super().__init__(address, port, timeout=timeout)
        # The default Host header names the port only when it is not the scheme's own (443 for TLS).
        self.default_port = http.client.HTTPS_PORT if tls is not None else http.client.HTTP_PORT
        self._deadline = time.monotonic() + timeout
        self._tls = tls
        self._server_name = server_name
        self._guard: socket.socket | None = None
        self._watchdog: threading.Timer | None = None
        self.timed_out = False

    def _fire(self) -> None:
        self.timed_out = True
        if self._guard is not None:
            with contextlib.suppress(OSError):  # already closed: the attempt ended just now
                self._guard.shutdown(socket.SHUT_RDWR)

    def connect(self) -> None:
        sock = _open(self.host, self.port, self._deadline)
        self._guard = sock.dup()
        self._watchdog = threading.Timer(max(0.0, self._deadline - time.monotonic()), self._fire)
        self._watchdog.daemon = True
        self._watchdog.start()
        if self._tls is not None:
            # server_hostname is the SNI name and the name checked (if the context checks one); an IP address is
            # never sent as SNI.
            sock = self._tls.wrap_socket(sock, server_hostname=self._server_name or self.host)
        self.sock = sock

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._guard is not None:
            self._guard.close()
        super().close()


def _describe(exc: BaseException, timed_out: bool, timeout: int, address: str) -> str:
    if timed_out or isinstance(exc, TimeoutError):
        return f"timed out after {timeout} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {address}: {exc.strerror or exc}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP response ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return f"{type(exc).__name__}: {exc}"


def _attempt(spec: SmokeSpec, address: str, port: int, tls: ssl.SSLContext | None,
             server_name: str | None) -> dict[str, Any]:
    began = time.monotonic()
    connection = _Connection(address, port, spec.timeout_seconds, tls, server_name)
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}
    if spec.host:
        # The name the listener rules route on. Without one http.client sends the address (and the port, when not
        # the scheme's default), which is what a request to that address carries anyway.
        headers["Host"] = spec.host
    outcome: dict[str, Any]
    try:
        connection.request("GET", spec.path, headers=headers)
        response = connection.getresponse()
        if connection.timed_out:
            # The watchdog's shutdown reads as end of headers to http.client: a status cut short is no answer.
            raise TimeoutError
        outcome = {"status": response.status}
        with contextlib.suppress(OSError, http.client.HTTPException):  # the status is the verdict, not the body
            response.read(MAX_BODY_BYTES)
    except (OSError, http.client.HTTPException) as exc:
        outcome = {"error": _describe(exc, connection.timed_out, spec.timeout_seconds, address)}
    finally:
        connection.close()
    return {**outcome, "elapsedMs": round((time.monotonic() - began) * 1000)}


def _attempts_text(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def check(spec: SmokeSpec, *, scheme: str, address: str | Sequence[str], port: int, server_name: str | None = None,
          ssl_context: ssl.SSLContext | None = None, sleep: Callable[[float], None] = time.sleep,
          on_attempt: Callable[[dict[str, Any]], None] | None = None) -> CheckResult:
    """GET ``spec.path`` at ``scheme://address:port`` up to ``spec.attempts`` times, :data:`ATTEMPT_DELAY_SECONDS`
    apart, until a status ``spec.expect_status`` accepts; never raises for what the service or network does.

    ``address``: a host name or IP address, or several, used in turn across attempts (the hook passes the load
    balancer's private addresses). ``server_name`` (default ``spec.host``): the TLS name to ask for and verify.
    ``ssl_context``: used as given instead of :func:`tls_context` (a private CA, say). ``on_attempt`` sees each
    attempt's record as soon as it ends (the hook logs it)."""
    if scheme not in ("http", "https"):
        raise ValueError(f"scheme must be 'http' or 'https', got {scheme!r}")
    addresses = [address] if isinstance(address, str) else list(address)
    if not addresses or not all(isinstance(a, str) and a for a in addresses):
        raise ValueError(f"address must be a non-empty host name or list of them, got {address!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer from 1 to 65535, got {port!r}")
    name = server_name or spec.host
    tls = (ssl_context or tls_context(name)) if scheme == "https" else None
    records: list[dict[str, Any]] = []
    outcome = ""
    for number in range(1, spec.attempts + 1):
        if number > 1:
            sleep(ATTEMPT_DELAY_SECONDS)
        target = addresses[(number - 1) % len(addresses)]
        record = {"attempt": number, "address": target, **_attempt(spec, target, port, tls, name)}
        records.append(record)
        if on_attempt is not None:
            on_attempt(record)
        status = record.get("status")
        if status is not None and spec.accepts(status):
            return CheckResult(True, f"GET {spec.path} -> {status} (attempt {number} of {spec.attempts})", records)
        outcome = f"{status}, expected {spec.expect_status}" if status is not None else record["error"]
    return CheckResult(False, f"GET {spec.path} -> {outcome} ({_attempts_text(spec.attempts)})", records)


# --- where the hook connects ------------------------------------------------------------------------------------


class HookError(Exception):
    """The hook cannot run the check (bad payload, environment or spec; no load balancer addresses): the deployment
    is answered failed with this message as the reason."""


@dataclass(frozen=True)
class Listener:
    """The test listener the hook calls: ``LOAD_BALANCER`` (the ALB's ARN suffix), ``TEST_PORT``, ``PROTOCOL``."""

    load_balancer: str
    port: int
    protocol: str

    @property
    def scheme(self) -> str:
        return self.protocol.lower()


def listener_from_env(env: Mapping[str, str] | None = None) -> Listener:
    """The listener from the environment; :class:`HookError` names every missing or invalid variable."""
    env = os.environ if env is None else env
    problems: list[str] = []
    load_balancer, port, protocol = (env.get(LOAD_BALANCER_ENV, ""), env.get(TEST_PORT_ENV, ""),
                                     env.get(PROTOCOL_ENV, ""))
    if not _LOAD_BALANCER.fullmatch(load_balancer):
        problems.append(f"{LOAD_BALANCER_ENV}: expected an ALB's ARN suffix app/<name>/<id>, got {show(load_balancer)}")
    if not _PORT.fullmatch(port) or int(port) > 65535:
        problems.append(f"{TEST_PORT_ENV}: expected a port from 1 to 65535, got {show(port)}")
    if protocol not in _PROTOCOLS:
        problems.append(f"{PROTOCOL_ENV}: expected one of {list(_PROTOCOLS)}, got {show(protocol)}")
    if problems:
        raise HookError("environment: " + "; ".join(problems))
    return Listener(load_balancer, int(port), protocol)


def load_balancer_addresses(ec2: Any, load_balancer: str) -> list[str]:
    """The private IPv4 addresses of the ALB's network interfaces (one per subnet), sorted; ELB describes each
    interface as ``ELB <ARN suffix>``."""
    addresses: set[str] = set()
    pages = ec2.get_paginator("describe_network_interfaces").paginate(
        Filters=[{"Name": "description", "Values": [f"ELB {load_balancer}"]}])
    for page in pages:
        for interface in page.get("NetworkInterfaces", []):
            if interface.get("PrivateIpAddress"):
                addresses.add(interface["PrivateIpAddress"])
    return sorted(addresses)


# --- AWS access (module-level seams: tests replace these, nothing else) ----------------------------------------


def _client(service: str) -> Any:
    """A client with the function's own credentials, in its own region (Lambda sets AWS_REGION)."""
    return boto3.client(service, region_name=os.environ.get(REGION_ENV) or None, config=RETRY)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _run(spec: SmokeSpec, fields: Mapping[str, Any]) -> CheckResult:
    """The check through the test listener of the environment's load balancer."""
    listener = listener_from_env()
    addresses = load_balancer_addresses(_client("ec2"), listener.load_balancer)
    if not addresses:
        raise HookError(f"load balancer {listener.load_balancer} has no network interfaces with private addresses "
                        f"(looked for description 'ELB {listener.load_balancer}')")
    return check(spec, scheme=listener.scheme, address=addresses, port=listener.port, sleep=_sleep,
                 on_attempt=lambda record: log("smoke-test-attempt", **fields, **record))


def _loggable(value: Any) -> str:
    """A payload value for a log field: untrusted, so a string is cut short and anything else shown as repr."""
    return value[:300] if isinstance(value, str) else show(value)


def _verdict(fields: Mapping[str, Any], result: str, reason: str, attempts: list[dict[str, Any]]) -> None:
    log("smoke-test", **fields, result=result, reason=reason, attempts=attempts)


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, HookError | SmokeTestError):
        return str(exc)
    # Anything else is a fault of this function or of an AWS call; the deployment is still answered.
    return f"the smoke test could not run: {type(exc).__name__}: {exc}"


# --- ECS lifecycle hook -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EcsHook:
    service_arn: str
    revision_arn: str
    spec: SmokeSpec


def parse_ecs_event(event: Mapping[str, Any], account: str, region: str) -> EcsHook:
    """The hook invocation ``event`` describes, or :class:`HookError`; no AWS call.

    The documented payload carries ``serviceArn``, ``targetServiceRevisionArn``, ``testTrafficWeights`` and
    ``productionTrafficWeights`` at the top level; the same four under ``executionDetails`` (with
    ``lifecycleStage``, ``executionId``, ``resourceArn`` beside them) are read too. ``hookDetails``, an object or
    its JSON text, is the service's spec. The service must be in this function's account and region."""
    details = event.get("executionDetails", event)
    if not isinstance(details, Mapping):
        raise HookError(f"executionDetails: expected an object, got {show(details)}")
    stage = event.get("lifecycleStage")
    if stage is not None and stage != ECS_STAGE:
        raise HookError(f"lifecycleStage: the smoke test runs at {ECS_STAGE}, invoked at {show(stage)}")
    service_arn, revision_arn = details.get("serviceArn"), details.get("targetServiceRevisionArn")
    service = _SERVICE_ARN.fullmatch(service_arn) if isinstance(service_arn, str) else None
    if service is None:
        raise HookError(f"serviceArn: expected an ECS service ARN, got {show(service_arn)}")
    if (service["account"], service["region"]) != (account, region):
        # Another account's or region's deployment must never get this account's verdict.
        raise HookError(f"serviceArn: {service_arn} is not in this function's account {account} and region {region}")
    revision = _REVISION_ARN.fullmatch(revision_arn) if isinstance(revision_arn, str) else None
    if revision is None:
        raise HookError(f"targetServiceRevisionArn: expected an ECS service revision ARN, got {show(revision_arn)}")
    if revision.group("partition", "region", "account", "cluster", "service") != service.group(
            "partition", "region", "account", "cluster", "service"):
        raise HookError(f"targetServiceRevisionArn: {revision_arn} is not a revision of {service_arn}")
    for key in ("testTrafficWeights", "productionTrafficWeights"):
        if key in details and not isinstance(details[key], Mapping):
            raise HookError(f"{key}: expected an object, got {show(details[key])}")
    raw = event.get("hookDetails")
    if raw is None:
        raise HookError("hookDetails: missing (crossdeploy sets the service's smoke test there)")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the decoder's stack
            raise HookError(f"hookDetails: not JSON: {show(raw)}") from None
    return EcsHook(service_arn, revision_arn, SmokeSpec.from_json(raw, "hookDetails"))


def _own_account_region() -> tuple[str, str]:
    account, region = os.environ.get(ACCOUNT_ID_ENV, ""), os.environ.get(REGION_ENV, "")
    problems = []
    if not ACCOUNT_ID.fullmatch(account):
        problems.append(f"{ACCOUNT_ID_ENV}: expected a 12-digit account id, got {show(account)}")
    if not REGION.fullmatch(region):
        problems.append(f"{REGION_ENV}: expected a region name, got {show(region)}")
    if problems:
        raise HookError("environment: " + "; ".join(problems))
    return account, region


def handle_ecs(event: Mapping[str, Any]) -> dict[str, str]:
    """ECS lifecycle hook: ``{"hookStatus": "SUCCEEDED"}`` or ``{"hookStatus": "FAILED"}``, never an exception
    (an exception would roll back too, but say nothing about why)."""
    fields: dict[str, Any] = {"trigger": "ecs"}
    source = event.get("executionDetails", event)
    for key, name in (("serviceArn", "service"), ("targetServiceRevisionArn", "revision")):
        value = source.get(key) if isinstance(source, Mapping) else None
        if value is not None:
            fields[name] = _loggable(value)
    attempts: list[dict[str, Any]] = []
    try:
        hook = parse_ecs_event(event, *_own_account_region())
        result = _run(hook.spec, fields)
        attempts, passed, reason = result.attempts, result.ok, result.reason
    except Exception as exc:  # answered FAILED with the reason, whatever it is
        passed, reason = False, _failure_reason(exc)
    _verdict(fields, "passed" if passed else "failed", reason, attempts)
    return {"hookStatus": HOOK_SUCCEEDED if passed else HOOK_FAILED}


# --- CodeDeploy lifecycle hook ----------------------------------------------------------------------------------


def spec_for_group(group: str, env: Mapping[str, str] | None = None) -> SmokeSpec:
    """The smoke test of deployment group ``group`` from ``SMOKE_TESTS`` (JSON: group name -> spec)."""
    env = os.environ if env is None else env
    raw = env.get(SMOKE_TESTS_ENV)
    if not raw:
        raise HookError(f"environment: {SMOKE_TESTS_ENV} is not set")
    try:
        table = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the decoder's stack
        raise HookError(f"environment: {SMOKE_TESTS_ENV} is not JSON: {show(raw)}") from None
    if not isinstance(table, dict):
        raise HookError(f"environment: {SMOKE_TESTS_ENV}: expected an object, got {show(table)}")
    if group not in table:
        raise HookError(f"deployment group {group!r} has no smoke test in {SMOKE_TESTS_ENV} "
                        f"(has {show(sorted(table))})")
    return SmokeSpec.from_json(table[group], f"{SMOKE_TESTS_ENV}[{group!r}]")


def _codedeploy_check(codedeploy: Any, deployment_id: str, fields: dict[str, Any]) -> CheckResult:
    info = codedeploy.get_deployment(deploymentId=deployment_id)["deploymentInfo"]
    application, group = info.get("applicationName"), info.get("deploymentGroupName")
    fields.update(application=application, service=group)
    expected = os.environ.get(CODEDEPLOY_APPLICATION_ENV)
    if not expected:
        raise HookError(f"environment: {CODEDEPLOY_APPLICATION_ENV} is not set")
    if application != expected:
        raise HookError(f"deployment {deployment_id} belongs to application {show(application)}, "
                        f"not {expected!r}")
    if not isinstance(group, str) or not group:
        raise HookError(f"deployment {deployment_id} names no deployment group")
    return _run(spec_for_group(group), fields)


def handle_codedeploy(event: Mapping[str, Any]) -> dict[str, str]:
    """CodeDeploy lifecycle hook: the verdict goes to PutLifecycleEventHookExecutionStatus, ``Failed`` whatever
    prevented the check. If that call itself fails, the exception propagates: Lambda's retry of the asynchronous
    invocation then asks again, rather than CodeDeploy waiting out its hour."""
    deployment_id, execution_id = event.get("DeploymentId"), event.get("LifecycleEventHookExecutionId")
    fields: dict[str, Any] = {"trigger": "codedeploy", "deployment": _loggable(deployment_id)}
    if not (isinstance(deployment_id, str) and deployment_id and isinstance(execution_id, str) and execution_id):
        _verdict(fields, "refused", f"cannot answer: DeploymentId {show(deployment_id)} and "
                                    f"LifecycleEventHookExecutionId {show(execution_id)} must both be non-empty "
                                    f"strings", [])
        return {"hookStatus": HOOK_FAILED}
    fields["hookExecution"] = _loggable(execution_id)
    codedeploy = _client("codedeploy")
    attempts: list[dict[str, Any]] = []
    try:
        result = _codedeploy_check(codedeploy, deployment_id, fields)
        attempts, passed, reason = result.attempts, result.ok, result.reason
    except Exception as exc:  # reported Failed with the reason, whatever it is
        passed, reason = False, _failure_reason(exc)
    status = CODEDEPLOY_SUCCEEDED if passed else CODEDEPLOY_FAILED
    _verdict(fields, "passed" if passed else "failed", reason, attempts)
    try:
        codedeploy.put_lifecycle_event_hook_execution_status(
            deploymentId=deployment_id, lifecycleEventHookExecutionId=execution_id, status=status)
    except Exception as exc:
        log("smoke-test-report-failed", **fields, status=status, error=f"{type(exc).__name__}: {exc}")
        raise
    return {"status": status}


# --- entry point ------------------------------------------------------------------------------------------------


def handler(event: Any, context: Any) -> dict[str, str]:
    """Lambda entry point: an ECS lifecycle hook payload, a CodeDeploy hook payload, or a refusal (FAILED)."""
    if isinstance(event, Mapping):
        ecs = any(key in event for key in _ECS_KEYS)
        codedeploy = any(key in event for key in _CODEDEPLOY_KEYS)
        if ecs and not codedeploy:
            return handle_ecs(event)
        if codedeploy and not ecs:
            return handle_codedeploy(event)
        keys = show(sorted(str(key) for key in event))
        reason = f"neither an ECS nor a CodeDeploy lifecycle hook payload (keys {keys})"
    else:
        reason = f"the payload is not an object: {show(event)}"
    _verdict({"trigger": "unknown"}, "refused", reason, [])
    return {"hookStatus": HOOK_FAILED}


if __name__ == "__main__":
    # Not a command line: `python -m handlers.smoke_test` (with --help or anything else) used to import the
    # module, do nothing and exit 0, which reads as success. Say what it is instead, and fail like a usage error.
    import sys

    print("handlers.smoke_test: not a command line; it is the smoke-test hook's Lambda function (ECS "
          "and CodeDeploy lifecycle hooks call handlers.smoke_test.handler)", file=sys.stderr)
    sys.exit(2)
