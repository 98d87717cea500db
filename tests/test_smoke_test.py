"""The smoke-test handler, offline: :func:`check` against a real ``http.server`` on 127.0.0.1 (plain and TLS, with a
throw-away CA trusted through ``SSL_CERT_FILE``, which OpenSSL's default verify paths read), the ECS lifecycle hook
against moto EC2 (the load balancer's network interface is given the private address 127.0.0.1, so the real ENI
lookup leads to the local server), and the CodeDeploy hook with botocore's Stubber on CodeDeploy (moto has no
lifecycle hook API), checking the exact GetDeployment and PutLifecycleEventHookExecutionStatus requests.

Payloads are AWS's documented shapes: the ECS one from "Lifecycle hooks for Amazon ECS service deployments"
(POST_TEST_TRAFFIC_SHIFT example, with a 12-digit account), the CodeDeploy one from the AppSpec "hooks" section.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from handlers import smoke_test as st
from handlers.smoke_test import SmokeSpec, SmokeTestError, check, parse_status_ranges, worst_case_seconds

ACCOUNT = "123456789012"
REGION = "us-west-2"
LOAD_BALANCER = "app/crossdeploy-qa/50dc6c495c0c9188"
OTHER_LOAD_BALANCER = "app/other-alb/0123456789abcdef"
SERVICE_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/myCluster/myService"
REVISION_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service-revision/myCluster/myService/01275892"
DEPLOYMENT = "d-A1B2C3D4E"
EXECUTION = "eyJlbmNyeXB0ZWREYXRhIjoiZXhhbXBsZSJ9"
APPLICATION = "crossdeploy-prod-orders"
GROUP = "orders-us-west-2"
NAME = "orders.example.com"


# --- a local HTTP(S) server -------------------------------------------------------------------------------------


class Server:
    """Answers the n-th request with ``statuses[n]`` (the last one repeats); ``mode`` ``silent`` never answers,
    ``trickle`` sends the response a byte at a time, slower than any socket timeout notices."""

    def __init__(self, tls: Any = None) -> None:
        self.requests: list[dict[str, str | None]] = []
        self.statuses = [200]
        self.headers: dict[str, str] = {}
        self.mode = "answer"
        self.release = threading.Event()
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                state.requests.append({"path": self.path, "host": self.headers.get("Host")})
                if state.mode == "silent":
                    state.release.wait(10)
                    return
                if state.mode == "trickle":
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100:
                        if state.release.wait(0.05):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    return
                status = state.statuses[min(len(state.requests), len(state.statuses)) - 1]
                body = b"hello"
                self.send_response(status)
                for key, value in state.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.stop()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nothing listens on: bound (so nobody else takes it) but not listening, so connecting is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def spec(**kwargs: Any) -> SmokeSpec:
    return SmokeSpec(**{"path": "/orders/health", "timeout_seconds": 1, **kwargs})


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# --- status ranges and the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ranges"), [
    ("200", ((200, 200),)),
    ("200,204", ((200, 200), (204, 204))),
    ("200-299,301", ((200, 299), (301, 301))),
    ("200-399", ((200, 399),)),
    ("100-599", ((100, 599),)),
    ("200, 204", ((200, 200), (204, 204))),
])
def test_status_ranges_parse(text, ranges):
    assert parse_status_ranges(text) == ranges


@pytest.mark.parametrize(("text", "message"), [
    ("600", "not HTTP status codes or ranges (100-599): '600'"),
    ("99", "not HTTP status codes or ranges (100-599): '99'"),
    ("2xx", "not HTTP status codes or ranges (100-599): '2xx'"),
    ("", "not HTTP status codes or ranges (100-599): ''"),
    ("200,,204", "not HTTP status codes or ranges (100-599): ''"),
    ("0200", "not HTTP status codes or ranges (100-599): '0200'"),
    ("200-600", "not HTTP status codes or ranges (100-599): '200-600'"),
    ("399-200", "ranges must go from low to high: '399-200'"),
    ("2xx,300-200", "not HTTP status codes or ranges (100-599): '2xx'; ranges must go from low to high: '300-200'"),
    (200, "expected a string of HTTP status codes or ranges such as '200-399' or '200,204', got 200"),
])
def test_status_ranges_refused(text, message):
    with pytest.raises(ValueError) as raised:
        parse_status_ranges(text)
    assert str(raised.value) == message


def test_spec_defaults_and_round_trip():
    parsed = SmokeSpec.from_json({"path": "/orders/health"})
    assert parsed == SmokeSpec("/orders/health", "200-399", 10, 3, None)
    assert parsed.to_json() == {"path": "/orders/health", "expectStatus": "200-399", "timeoutSeconds": 10,
                                "attempts": 3}
    full = SmokeSpec("/x?y=1", "200,204", 60, 10, NAME)
    assert SmokeSpec.from_json(full.to_json()) == full
    assert full.to_json()["host"] == NAME
    assert full.accepts(204) and not full.accepts(201)


def test_spec_names_every_problem_with_key_and_value():
    with pytest.raises(SmokeTestError) as raised:
        SmokeSpec.from_json({"path": "health", "expectStatus": "600", "timeoutSeconds": 61, "attempts": 0,
                             "host": "*.example.com", "retries": 2})
    assert raised.value.problems == [
        "smokeTest: unknown key 'retries'",
        "smokeTest.path: expected a request path starting with '/' (printable ASCII, no spaces, at most 1024 "
        "characters), got 'health'",
        "smokeTest.expectStatus: not HTTP status codes or ranges (100-599): '600'",
        "smokeTest.timeoutSeconds: expected an integer from 1 to 60, got 61",
        "smokeTest.attempts: expected an integer from 1 to 10, got 0",
        "smokeTest.host: expected a DNS host name (no port, no wildcard), got '*.example.com'",
    ]


@pytest.mark.parametrize(("data", "problem"), [
    ({}, "smokeTest: missing key 'path'"),
    ([], "smokeTest: expected an object, got []"),
    ({"path": "/a b"}, "smokeTest.path: expected a request path"),
    ({"path": "/", "timeoutSeconds": True}, "smokeTest.timeoutSeconds: expected an integer from 1 to 60, got True"),
    ({"path": "/", "attempts": 2.0}, "smokeTest.attempts: expected an integer from 1 to 10, got 2.0"),
    ({"path": "/", "expectStatus": 200}, "smokeTest.expectStatus: expected a string of HTTP status codes"),
    ({"path": "/", "host": None}, "smokeTest.host: expected a DNS host name"),
    ({"path": "/", "host": "orders.example.com:8443"}, "smokeTest.host: expected a DNS host name"),
])
def test_spec_refuses_wrong_types_and_values(data, problem):
    with pytest.raises(SmokeTestError) as raised:
        SmokeSpec.from_json(data)
    assert len(raised.value.problems) == 1 and raised.value.problems[0].startswith(problem)


def test_spec_is_checked_when_constructed_directly():
    with pytest.raises(SmokeTestError, match=r"smokeTest\.attempts"):
        SmokeSpec("/", attempts=11)


def test_worst_case_seconds():
    assert worst_case_seconds(SmokeSpec("/")) == 3 * 10 + 2 * st.ATTEMPT_DELAY_SECONDS
    assert worst_case_seconds(SmokeSpec("/", attempts=1, timeout_seconds=7)) == 7
    longest = SmokeSpec("/", timeout_seconds=st.MAX_TIMEOUT_SECONDS, attempts=st.MAX_ATTEMPTS)
    assert worst_case_seconds(longest) < 900  # Lambda's maximum duration


# --- check ------------------------------------------------------------------------------------------------------


def test_check_passes(server):
    sleeps = Sleeps()
    result = check(spec(), scheme="http", address="127.0.0.1", port=server.port, sleep=sleeps)
    assert result.ok
    assert result.reason == "GET /orders/health -> 200 (attempt 1 of 3)"
    assert [{k: v for k, v in a.items() if k != "elapsedMs"} for a in result.attempts] == [
        {"attempt": 1, "address": "127.0.0.1", "status": 200}]
    assert isinstance(result.attempts[0]["elapsedMs"], int)
    assert sleeps == [] and server.requests == [{"path": "/orders/health", "host": f"127.0.0.1:{server.port}"}]


def test_check_wrong_status(server):
    server.statuses = [503]
    sleeps = Sleeps()
    result = check(spec(), scheme="http", address="127.0.0.1", port=server.port, sleep=sleeps)
    assert not result.ok
    assert result.reason == "GET /orders/health -> 503, expected 200-399 (3 attempts)"
    assert [a["status"] for a in result.attempts] == [503, 503, 503]
    assert sleeps == [st.ATTEMPT_DELAY_SECONDS] * 2


def test_check_timeout(server):
    server.mode = "silent"
    began = time.monotonic()
    result = check(spec(attempts=1), scheme="http", address="127.0.0.1", port=server.port, sleep=Sleeps())
    assert not result.ok
    assert result.reason == "GET /orders/health -> timed out after 1 s (1 attempt)"
    assert result.attempts[0]["error"] == "timed out after 1 s"
    assert time.monotonic() - began < 2


def test_check_timeout_bounds_the_whole_attempt(server):
    """Each byte arrives well within the socket timeout; the attempt still ends at its deadline."""
    server.mode = "trickle"
    began = time.monotonic()
    result = check(spec(attempts=1), scheme="http", address="127.0.0.1", port=server.port, sleep=Sleeps())
    assert result.reason == "GET /orders/health -> timed out after 1 s (1 attempt)"
    assert time.monotonic() - began < 2


def test_check_connection_refused(closed_port):
    result = check(spec(attempts=2), scheme="http", address="127.0.0.1", port=closed_port, sleep=Sleeps())
    assert not result.ok
    assert result.reason == "GET /orders/health -> connection refused (2 attempts)"
    assert [a["error"] for a in result.attempts] == ["connection refused"] * 2


def test_check_retries_until_success(server):
    server.statuses = [503, 503, 200]
    sleeps = Sleeps()
    result = check(spec(attempts=3), scheme="http", address="127.0.0.1", port=server.port, sleep=sleeps)
    assert result.ok
    assert result.reason == "GET /orders/health -> 200 (attempt 3 of 3)"
    assert [a["status"] for a in result.attempts] == [503, 503, 200]
    assert sleeps == [st.ATTEMPT_DELAY_SECONDS] * 2


def test_check_gives_up_after_its_attempts(server):
    server.statuses = [503, 503, 200]
    result = check(spec(attempts=2), scheme="http", address="127.0.0.1", port=server.port, sleep=Sleeps())
    assert not result.ok
    assert result.reason == "GET /orders/health -> 503, expected 200-399 (2 attempts)"
    assert len(server.requests) == 2


def test_check_sends_the_host_header(server):
    result = check(spec(host=NAME), scheme="http", address="127.0.0.1", port=server.port, sleep=Sleeps())
    assert result.ok
    assert server.requests == [{"path": "/orders/health", "host": NAME}]


def test_check_does_not_follow_redirects(server):
    server.statuses = [302]
    server.headers = {"Location": "/elsewhere"}
    result = check(spec(expect_status="200"), scheme="http", address="127.0.0.1", port=server.port,
                   sleep=Sleeps())
    assert result.reason == "GET /orders/health -> 302, expected 200 (3 attempts)"
    assert {r["path"] for r in server.requests} == {"/orders/health"}
    # The default range counts a redirect as an answer.
    assert check(spec(), scheme="http", address="127.0.0.1", port=server.port, sleep=Sleeps()).ok


def test_check_rotates_through_addresses(server):
    # 127.0.0.2 is loopback too, but the server listens on 127.0.0.1 only: the first attempt is refused.
    result = check(spec(attempts=2), scheme="http", address=["127.0.0.2", "127.0.0.1"], port=server.port,
                   sleep=Sleeps())
    assert result.ok
    assert [(a["address"], a.get("error"), a.get("status")) for a in result.attempts] == [
        ("127.0.0.2", "connection refused", None), ("127.0.0.1", None, 200)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scheme": "ftp", "address": "127.0.0.1", "port": 80}, "scheme must be"),
    ({"scheme": "http", "address": [], "port": 80}, "address must be"),
    ({"scheme": "http", "address": "127.0.0.1", "port": 0}, "port must be"),
])
def test_check_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check(spec(), **kwargs)


# --- check over TLS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    """A CA and a server certificate for orders.example.com signed by it (ECDSA: quick to generate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name(NAME)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(leaf.public_bytes(pem) + key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {"ca": folder / "ca.pem", "server": folder / "server.pem"}


@pytest.fixture
def tls_server(certificates) -> Iterator[Server]:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates["server"])
    running = Server(tls=context)
    yield running
    running.stop()


@pytest.fixture
def trust_test_ca(certificates, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def test_https_verifies_the_chain_but_not_an_address(tls_server, trust_test_ca):
    """No name given: connecting to 127.0.0.1, which the certificate does not name, is fine; the chain counts."""
    result = check(spec(attempts=1), scheme="https", address="127.0.0.1", port=tls_server.port, sleep=Sleeps())
    assert result.ok, result.reason


def test_https_refuses_an_untrusted_chain(tls_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    result = check(spec(attempts=1), scheme="https", address="127.0.0.1", port=tls_server.port, sleep=Sleeps())
    assert not result.ok
    assert result.reason.startswith("GET /orders/health -> TLS certificate not accepted: ")
    assert "unable to get local issuer certificate" in result.reason


def test_https_checks_a_named_host(tls_server, trust_test_ca):
    named = check(spec(attempts=1, host=NAME), scheme="https", address="127.0.0.1", port=tls_server.port,
                  sleep=Sleeps())
    assert named.ok, named.reason
    wrong = check(spec(attempts=1, host="payments.example.com"), scheme="https", address="127.0.0.1",
                  port=tls_server.port, sleep=Sleeps())
    assert not wrong.ok
    assert "TLS certificate not accepted: Hostname mismatch" in wrong.reason
    # server_name alone (the engine's public name) is checked the same way.
    assert not check(spec(attempts=1), scheme="https", address="127.0.0.1", port=tls_server.port,
                     server_name="payments.example.com", sleep=Sleeps()).ok


# --- the hooks: environment, load balancer, logs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def aws() -> Iterator[None]:
    """moto EC2 with the load balancer's interface, once per module (a moto EC2 backend takes a second to build);
    the environment of the hook function around it."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                            "ACCOUNT_ID": ACCOUNT, "LOAD_BALANCER": LOAD_BALANCER, "PROTOCOL": "HTTP"}.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        with mock_aws():
            ec2 = boto3.client("ec2", region_name=REGION)
            # moto accepts a loopback VPC, so the load balancer's interface can carry the local server's address.
            vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/24")["Subnet"]["SubnetId"]
            ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress="127.0.0.1",
                                         Description=f"ELB {LOAD_BALANCER}")
            # Another load balancer's interface: were it picked, its attempts would be refused.
            ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress="127.0.0.3",
                                         Description=f"ELB {OTHER_LOAD_BALANCER}")
            yield


@pytest.fixture
def sleeps(monkeypatch) -> Sleeps:
    recorded = Sleeps()
    monkeypatch.setattr(st, "_sleep", recorded)
    return recorded


@pytest.fixture
def world(aws, sleeps, server, monkeypatch) -> Server:
    monkeypatch.setenv("TEST_PORT", str(server.port))
    return server


def log_lines(capsys) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def verdict(capsys) -> dict[str, Any]:
    lines = [line for line in log_lines(capsys) if line["event"] == "smoke-test"]
    assert len(lines) == 1
    return lines[0]


def test_load_balancer_addresses(aws):
    assert st.load_balancer_addresses(boto3.client("ec2", region_name=REGION), LOAD_BALANCER) == ["127.0.0.1"]
    assert st.load_balancer_addresses(boto3.client("ec2", region_name=REGION), "app/none/0000000000000000") == []


@pytest.mark.parametrize(("env", "message"), [
    ({}, "environment: LOAD_BALANCER: expected an ALB's ARN suffix app/<name>/<id>, got ''; TEST_PORT: expected a "
         "port from 1 to 65535, got ''; PROTOCOL: expected one of ['HTTP', 'HTTPS'], got ''"),
    ({"LOAD_BALANCER": "arn:aws:elasticloadbalancing:x", "TEST_PORT": "65536", "PROTOCOL": "https"},
     "environment: LOAD_BALANCER: expected an ALB's ARN suffix app/<name>/<id>, got 'arn:aws:elasticloadbalancing:x'; "
     "TEST_PORT: expected a port from 1 to 65535, got '65536'; PROTOCOL: expected one of ['HTTP', 'HTTPS'], "
     "got 'https'"),
])
def test_listener_environment_problems(env, message):
    with pytest.raises(st.HookError) as raised:
        st.listener_from_env(env)
    assert str(raised.value) == message


def test_listener_from_environment():
    listener = st.listener_from_env({"LOAD_BALANCER": LOAD_BALANCER, "TEST_PORT": "8443", "PROTOCOL": "HTTPS"})
    assert (listener.load_balancer, listener.port, listener.scheme) == (LOAD_BALANCER, 8443, "https")


# --- ECS lifecycle hook -----------------------------------------------------------------------------------------


def ecs_event(details: Any = None, **overrides: Any) -> dict[str, Any]:
    """The documented POST_TEST_TRAFFIC_SHIFT payload, with crossdeploy's hookDetails."""
    event: dict[str, Any] = {"serviceArn": SERVICE_ARN, "targetServiceRevisionArn": REVISION_ARN,
                             "testTrafficWeights": {}, "productionTrafficWeights": {},
                             "hookDetails": details if details is not None else spec(attempts=2).to_json()}
    event.update(overrides)
    return event


def test_ecs_hook_passes(world, capsys):
    assert st.handler(ecs_event(), None) == {"hookStatus": "SUCCEEDED"}
    lines = log_lines(capsys)
    assert [line["event"] for line in lines] == ["smoke-test-attempt", "smoke-test"]
    assert {k: lines[0][k] for k in ("trigger", "service", "revision", "attempt", "address", "status")} == {
        "trigger": "ecs", "service": SERVICE_ARN, "revision": REVISION_ARN, "attempt": 1, "address": "127.0.0.1",
        "status": 200}
    final = lines[1]
    assert {k: final[k] for k in ("trigger", "service", "revision", "result", "reason")} == {
        "trigger": "ecs", "service": SERVICE_ARN, "revision": REVISION_ARN, "result": "passed",
        "reason": "GET /orders/health -> 200 (attempt 1 of 2)"}
    assert [a["status"] for a in final["attempts"]] == [200]
    assert world.requests == [{"path": "/orders/health", "host": f"127.0.0.1:{world.port}"}]


def test_ecs_hook_fails(world, sleeps, capsys):
    world.statuses = [503]
    assert st.handler(ecs_event(), None) == {"hookStatus": "FAILED"}
    final = verdict(capsys)
    assert final["result"] == "failed"
    assert final["reason"] == "GET /orders/health -> 503, expected 200-399 (2 attempts)"
    assert sleeps == [st.ATTEMPT_DELAY_SECONDS]


def test_ecs_hook_details_as_json_text(world, capsys):
    details = json.dumps(spec(attempts=1, host=NAME, expect_status="200").to_json())
    assert st.handler(ecs_event(details), None) == {"hookStatus": "SUCCEEDED"}
    assert world.requests == [{"path": "/orders/health", "host": NAME}]
    assert verdict(capsys)["result"] == "passed"


def test_ecs_hook_reads_execution_details(world, capsys):
    """The same four fields under executionDetails, as some ECS invocations carry them."""
    flat = ecs_event()
    event = {"executionId": "example", "lifecycleStage": "POST_TEST_TRAFFIC_SHIFT",
             "resourceArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:service-deployment/myCluster/myService/abc",
             "executionDetails": {k: flat[k] for k in ("serviceArn", "targetServiceRevisionArn",
                                                       "testTrafficWeights", "productionTrafficWeights")},
             "hookDetails": flat["hookDetails"]}
    assert st.handler(event, None) == {"hookStatus": "SUCCEEDED"}
    assert verdict(capsys)["service"] == SERVICE_ARN


@pytest.mark.parametrize(("event", "reason"), [
    (ecs_event(serviceArn=None), "serviceArn: expected an ECS service ARN, got None"),
    (ecs_event(serviceArn="myService"), "serviceArn: expected an ECS service ARN, got 'myService'"),
    ({k: v for k, v in ecs_event().items() if k != "targetServiceRevisionArn"},
     "targetServiceRevisionArn: expected an ECS service revision ARN, got None"),
    (ecs_event(targetServiceRevisionArn=REVISION_ARN.replace("myService/", "otherService/")),
     f"targetServiceRevisionArn: {REVISION_ARN.replace('myService/', 'otherService/')} is not a revision of "
     f"{SERVICE_ARN}"),
    (ecs_event(testTrafficWeights=[]), "testTrafficWeights: expected an object, got []"),
    (ecs_event(executionDetails="x"), "executionDetails: expected an object, got 'x'"),
    ({k: v for k, v in ecs_event().items() if k != "hookDetails"},
     "hookDetails: missing (crossdeploy sets the service's smoke test there)"),
    (ecs_event("{not json"), "hookDetails: not JSON: '{not json'"),
    (ecs_event({"path": "/", "attempts": 0}), "hookDetails.attempts: expected an integer from 1 to 10, got 0"),
    (ecs_event("[]"), "hookDetails: expected an object, got []"),
    (ecs_event(lifecycleStage="PRODUCTION_TRAFFIC_SHIFT"),
     "lifecycleStage: the smoke test runs at POST_TEST_TRAFFIC_SHIFT, invoked at 'PRODUCTION_TRAFFIC_SHIFT'"),
])
def test_ecs_malformed_payload_fails(world, capsys, event, reason):
    assert st.handler(event, None) == {"hookStatus": "FAILED"}
    final = verdict(capsys)
    assert (final["trigger"], final["result"], final["reason"], final["attempts"]) == ("ecs", "failed", reason, [])
    assert world.requests == []


@pytest.mark.parametrize(("account", "region"), [("210987654321", REGION), (ACCOUNT, "eu-west-1")])
def test_ecs_foreign_service_fails(world, capsys, account, region):
    arn = SERVICE_ARN.replace(f"{REGION}:{ACCOUNT}", f"{region}:{account}")
    event = ecs_event(serviceArn=arn,
                      targetServiceRevisionArn=REVISION_ARN.replace(f"{REGION}:{ACCOUNT}", f"{region}:{account}"))
    assert st.handler(event, None) == {"hookStatus": "FAILED"}
    assert verdict(capsys)["reason"] == (f"serviceArn: {arn} is not in this function's account {ACCOUNT} and "
                                         f"region {REGION}")
    assert world.requests == []


def test_ecs_no_load_balancer_addresses_fails(world, monkeypatch, capsys):
    monkeypatch.setenv("LOAD_BALANCER", "app/gone/0000000000000000")
    assert st.handler(ecs_event(), None) == {"hookStatus": "FAILED"}
    assert verdict(capsys)["reason"] == ("load balancer app/gone/0000000000000000 has no network interfaces with "
                                         "private addresses (looked for description 'ELB app/gone/0000000000000000')")


def test_ecs_bad_environment_fails(world, monkeypatch, capsys):
    monkeypatch.delenv("ACCOUNT_ID")
    assert st.handler(ecs_event(), None) == {"hookStatus": "FAILED"}
    assert verdict(capsys)["reason"] == "environment: ACCOUNT_ID: expected a 12-digit account id, got ''"
    monkeypatch.setenv("ACCOUNT_ID", ACCOUNT)
    monkeypatch.setenv("PROTOCOL", "TCP")
    assert st.handler(ecs_event(), None) == {"hookStatus": "FAILED"}
    assert verdict(capsys)["reason"] == "environment: PROTOCOL: expected one of ['HTTP', 'HTTPS'], got 'TCP'"
    assert world.requests == []


def test_ecs_unexpected_error_still_answers(world, monkeypatch, capsys):
    def broken(service):
        raise RuntimeError("no credentials")

    monkeypatch.setattr(st, "_client", broken)
    assert st.handler(ecs_event(), None) == {"hookStatus": "FAILED"}
    assert verdict(capsys)["reason"] == "the smoke test could not run: RuntimeError: no credentials"


# --- CodeDeploy lifecycle hook ----------------------------------------------------------------------------------


CODEDEPLOY_EVENT = {"DeploymentId": DEPLOYMENT, "LifecycleEventHookExecutionId": EXECUTION}


@pytest.fixture
def codedeploy(world, monkeypatch) -> Iterator[Stubber]:
    monkeypatch.setenv("CODEDEPLOY_APPLICATION", APPLICATION)
    monkeypatch.setenv("SMOKE_TESTS", json.dumps({GROUP: spec(attempts=2).to_json(),
                                                  "payments-us-west-2": {"path": "/payments/health"}}))
    client = boto3.client("codedeploy", region_name=REGION)
    stubber = Stubber(client)
    real = st._client
    monkeypatch.setattr(st, "_client", lambda service: client if service == "codedeploy" else real(service))
    with stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def deployment(application: str = APPLICATION, group: str = GROUP) -> dict[str, Any]:
    """GetDeployment's answer for a blue/green ECS deployment (fields as in the API reference)."""
    return {"deploymentInfo": {"applicationName": application, "deploymentGroupName": group,
                               "deploymentConfigName": "CodeDeployDefault.ECSAllAtOnce", "deploymentId": DEPLOYMENT,
                               "status": "InProgress", "computePlatform": "ECS", "creator": "user",
                               "deploymentStyle": {"deploymentType": "BLUE_GREEN",
                                                   "deploymentOption": "WITH_TRAFFIC_CONTROL"}}}


def expect(stubber: Stubber, answer: dict[str, Any], status: str) -> None:
    stubber.add_response("get_deployment", answer, {"deploymentId": DEPLOYMENT})
    stubber.add_response("put_lifecycle_event_hook_execution_status", {"lifecycleEventHookExecutionId": EXECUTION},
                         {"deploymentId": DEPLOYMENT, "lifecycleEventHookExecutionId": EXECUTION, "status": status})


def test_codedeploy_succeeded(codedeploy, world, capsys):
    expect(codedeploy, deployment(), "Succeeded")
    assert st.handler(dict(CODEDEPLOY_EVENT), None) == {"status": "Succeeded"}
    final = verdict(capsys)
    assert {k: final[k] for k in ("trigger", "deployment", "hookExecution", "application", "service", "result",
                                  "reason")} == {
        "trigger": "codedeploy", "deployment": DEPLOYMENT, "hookExecution": EXECUTION, "application": APPLICATION,
        "service": GROUP, "result": "passed", "reason": "GET /orders/health -> 200 (attempt 1 of 2)"}
    assert len(world.requests) == 1


def test_codedeploy_failed(codedeploy, world, capsys):
    world.statuses = [500]
    expect(codedeploy, deployment(), "Failed")
    assert st.handler(dict(CODEDEPLOY_EVENT), None) == {"status": "Failed"}
    assert verdict(capsys)["reason"] == "GET /orders/health -> 500, expected 200-399 (2 attempts)"


def test_codedeploy_unknown_group_reports_failed(codedeploy, world, capsys):
    expect(codedeploy, deployment(group="inventory-us-west-2"), "Failed")
    assert st.handler(dict(CODEDEPLOY_EVENT), None) == {"status": "Failed"}
    assert verdict(capsys)["reason"] == ("deployment group 'inventory-us-west-2' has no smoke test in SMOKE_TESTS "
                                         "(has ['orders-us-west-2', 'payments-us-west-2'])")
    assert world.requests == []


def test_codedeploy_foreign_application_reports_failed(codedeploy, world, capsys):
    expect(codedeploy, deployment(application="someone-else"), "Failed")
    assert st.handler(dict(CODEDEPLOY_EVENT), None) == {"status": "Failed"}
    assert verdict(capsys)["reason"] == (f"deployment {DEPLOYMENT} belongs to application 'someone-else', "
                                         f"not {APPLICATION!r}")
    assert world.requests == []


def test_codedeploy_bad_spec_reports_failed(codedeploy, world, monkeypatch, capsys):
    monkeypatch.setenv("SMOKE_TESTS", json.dumps({GROUP: {"path": "/", "expectStatus": "2xx"}}))
    expect(codedeploy, deployment(), "Failed")
    assert st.handler(dict(CODEDEPLOY_EVENT), None) == {"status": "Failed"}
    assert verdict(capsys)["reason"] == ("SMOKE_TESTS['orders-us-west-2'].expectStatus: not HTTP status codes or "
                                         "ranges (100-599): '2xx'")


def test_codedeploy_unreadable_deployment_reports_failed(codedeploy, world, capsys):
    codedeploy.add_client_error("get_deployment", "DeploymentDoesNotExistException", "no such deployment",
                                expected_params={"deploymentId": DEPLOYMENT})
    codedeploy.add_response("put_lifecycle_event_hook_execution_status",
                            {"lifecycleEventHookExecutionId": EXECUTION},
                            {"deploymentId": DEPLOYMENT, "lifecycleEventHookExecutionId": EXECUTION,
                             "status": "Failed"})
    assert st.handler(dict(CODEDEPLOY_EVENT), None) == {"status": "Failed"}
    assert "DeploymentDoesNotExistException" in verdict(capsys)["reason"]


def test_codedeploy_report_failure_raises(codedeploy, world, capsys):
    """An answer CodeDeploy did not take is raised, so Lambda's retry asks again."""
    codedeploy.add_response("get_deployment", deployment(), {"deploymentId": DEPLOYMENT})
    codedeploy.add_client_error("put_lifecycle_event_hook_execution_status", "ThrottlingException", "slow down")
    with pytest.raises(Exception, match="ThrottlingException"):
        st.handler(dict(CODEDEPLOY_EVENT), None)
    assert [line["event"] for line in log_lines(capsys)][-1] == "smoke-test-report-failed"


@pytest.mark.parametrize("event", [
    {"DeploymentId": DEPLOYMENT},
    {"LifecycleEventHookExecutionId": EXECUTION},
    {"DeploymentId": "", "LifecycleEventHookExecutionId": EXECUTION},
    {"DeploymentId": 7, "LifecycleEventHookExecutionId": EXECUTION},
])
def test_codedeploy_without_both_ids_is_not_answered(codedeploy, world, capsys, event):
    assert st.handler(event, None) == {"hookStatus": "FAILED"}  # the stubber has nothing queued: no call made
    final = verdict(capsys)
    assert (final["trigger"], final["result"]) == ("codedeploy", "refused")
    assert world.requests == []


# --- anything else ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("event", "reason"), [
    ({"source": "aws.ecr", "detail-type": "ECR Image Action"},
     "neither an ECS nor a CodeDeploy lifecycle hook payload (keys ['detail-type', 'source'])"),
    ({**CODEDEPLOY_EVENT, "serviceArn": SERVICE_ARN},
     "neither an ECS nor a CodeDeploy lifecycle hook payload (keys ['DeploymentId', "
     "'LifecycleEventHookExecutionId', 'serviceArn'])"),
    ([], "the payload is not an object: []"),
    (None, "the payload is not an object: None"),
])
def test_other_payloads_are_refused(capsys, event, reason):
    assert st.handler(event, None) == {"hookStatus": "FAILED"}
    final = verdict(capsys)
    assert (final["trigger"], final["result"], final["reason"]) == ("unknown", "refused", reason)

