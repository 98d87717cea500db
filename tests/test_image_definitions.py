"""The imageDetail.json -> imagedefinitions-<region>.json transform, its blue/green mode (taskdef.json,
appspec.yaml and a regional imageDetail.json per artifact), and the buildspecs that embed it.

Inputs come from the real sample (../shared/samples/imageDetail.json) with only account and digest rewritten;
ECR is moto, in-process for the unit tests and as a loopback server for the buildspec run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import botocore.session
import pytest
import yaml
from botocore.stub import Stubber
from botocore.validate import ParamValidator
from conftest import SAMPLES
from moto import mock_aws
from moto.server import ThreadedMotoServer

from components.buildspec import HANDLER_PATH, render_blue_green_buildspec, render_buildspec
from components.config import parse
from components.task_definition import IMAGE_PLACEHOLDER, task_definition
from handlers import image_definitions as idf

ACCOUNT = "123456789012"  # moto's default account, so describe_images' registryId matches what moto stores
HOME = "us-west-2"  # the sample's own region
REGIONS = [HOME, "eu-west-1", "ap-southeast-2"]
# moto derives the digest from the layer digests; the same manifest gives the same digest in every region,
# just as ECR replication keeps the digest.
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1469,
            "digest": "sha256:" + "c" * 64,
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": 3370706,
                "digest": "sha256:" + "d" * 64,
            }
        ],
    }
)
DIGEST = "sha256:" + "ab12" * 16  # for tests that never talk to ECR
DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}$")


@pytest.fixture(scope="session")
def raw_sample() -> dict:
    path = SAMPLES / "imageDetail.json"
    if not path.is_file():
        pytest.fail(f"samples not found at {SAMPLES}")
    return json.loads(path.read_text())


@pytest.fixture
def make_detail(raw_sample):
    """The sample with account and digest rewritten consistently (URI, ImageDigest, RegistryId)."""

    def make(digest: str = DIGEST, account: str = ACCOUNT) -> dict:
        detail = json.loads(json.dumps(raw_sample))
        host_and_repo = raw_sample["ImageURI"].split("@", 1)[0].replace("ACCOUNTID", account)
        detail.update(ImageURI=f"{host_and_repo}@{digest}", ImageDigest=digest, RegistryId=account)
        return detail

    return make


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": HOME,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "CODEBUILD_SRC_DIR", "IMAGE_DETAIL_FILE", "OUTPUT_DIR",
                 "BLUE_GREEN_TARGETS"):
        monkeypatch.delenv(name, raising=False)


def push(region: str, repository: str, *, endpoint_url: str | None = None) -> str:
    """Create the repository in `region` (if needed) and put the manifest there; returns ECR's digest."""
    ecr = boto3.client("ecr", region_name=region, endpoint_url=endpoint_url)
    try:
        ecr.create_repository(repositoryName=repository)
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    return ecr.put_image(repositoryName=repository, imageManifest=MANIFEST, imageTag="latest")["image"]["imageId"][
        "imageDigest"
    ]


# --- parsing and refusals -------------------------------------------------------------------------------------


def test_parse_reads_every_part_from_the_uri(make_detail, raw_sample):
    parts = idf.parse_image_detail(make_detail())
    assert parts == {
        "registry": ACCOUNT,
        "region": HOME,
        "suffix": "amazonaws.com",
        "repo": raw_sample["RepositoryName"],
        "digest": DIGEST,
    }


def test_raw_sample_is_refused_with_a_clear_message(raw_sample):
    # The documentation sample has placeholder account and digest; it must never turn into a deployable URI.
    with pytest.raises(idf.ImageDetailError) as caught:
        idf.parse_image_detail(raw_sample)
    message = str(caught.value)
    assert "\n" not in message
    assert "ImageURI" in message and "ACCOUNTID" in message and "sha256:<64 hex>" in message


def _without(field: str):
    return lambda d: {k: v for k, v in d.items() if k != field}


def _with(**changes):
    return lambda d: {**d, **changes}


def _uri(transform):
    return lambda d: {**d, "ImageURI": transform(d["ImageURI"])}


REFUSALS = {
    "not an object": (lambda d: [d], "JSON object"),
    "missing ImageURI": (_without("ImageURI"), "ImageURI is missing"),
    "missing ImageDigest": (_without("ImageDigest"), "ImageDigest is missing"),
    "missing RepositoryName": (_without("RepositoryName"), "RepositoryName is missing"),
    "non-string ImageDigest": (_with(ImageDigest=12345), "ImageDigest is missing or not a non-empty string"),
    "non-string ImageURI": (_with(ImageURI=["x"]), "ImageURI is missing or not a non-empty string"),
    "empty RepositoryName": (_with(RepositoryName=""), "RepositoryName is missing"),
    "tag instead of digest": (_uri(lambda u: u.split("@")[0] + ":latest"), "is not <account>"),
    "tag and digest": (_uri(lambda u: u.replace("@", ":latest@")), "is not <account>"),
    "upper-case digest": (_uri(lambda u: u.replace("ab12", "AB12")), "is not <account>"),
    "short digest": (_uri(lambda u: u[:-1]), "is not <account>"),
    "not sha256": (_uri(lambda u: u.replace("sha256:", "sha512:")), "is not <account>"),
    "not an ECR host": (_uri(lambda u: u.replace(".dkr.ecr.", ".docker.")), "is not <account>"),
    "ImageDigest disagrees": (_with(ImageDigest="sha256:" + "0" * 64), "ImageDigest 'sha256:000"),
    "RepositoryName disagrees": (_with(RepositoryName="other-repo"), "RepositoryName 'other-repo' disagrees"),
    "RegistryId disagrees": (_with(RegistryId="999999999999"), "RegistryId '999999999999' disagrees"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusals(case, make_detail):
    mutate, expected = REFUSALS[case]
    with pytest.raises(idf.ImageDetailError, match=re.escape(expected)) as caught:
        idf.parse_image_detail(mutate(make_detail()))
    assert "\n" not in str(caught.value)


# --- per-region URIs and the file format ----------------------------------------------------------------------


def test_regional_uris_pin_the_digest_on_each_replica(make_detail, raw_sample):
    detail = make_detail()
    repo = raw_sample["RepositoryName"]
    for region in REGIONS:
        for source in (detail, idf.parse_image_detail(detail)):  # raw imageDetail or parsed: same answer
            uri = idf.regional_image_uri(source, region)
            assert uri == f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repo}@{DIGEST}"
            assert DIGEST_RE.search(uri) and ":latest" not in uri


def test_china_dns_suffix_is_kept(make_detail):
    detail = make_detail()
    detail["ImageURI"] = detail["ImageURI"].replace(f"{HOME}.amazonaws.com/", "cn-north-1.amazonaws.com.cn/")
    uri = idf.regional_image_uri(detail, "cn-northwest-1")
    assert uri.startswith(f"{ACCOUNT}.dkr.ecr.cn-northwest-1.amazonaws.com.cn/") and uri.endswith(f"@{DIGEST}")


def test_bad_region_is_refused(make_detail):
    with pytest.raises(idf.TransformError, match="not an AWS region name"):
        idf.regional_image_uri(make_detail(), "US-EAST-2")


def test_image_definitions_has_the_documented_shape():
    documented = json.loads((SAMPLES / "imagedefinitions.json").read_text())
    produced = json.loads(idf.serialize(idf.image_definitions("sample-app", "u@" + DIGEST)))
    assert [sorted(entry) for entry in produced] == [sorted(entry) for entry in documented]
    assert produced == [{"name": "sample-app", "imageUri": "u@" + DIGEST}]


@pytest.mark.parametrize("name", ["", "has space", "x" * 256, None])
def test_image_definitions_refuses_bad_container_names(name):
    with pytest.raises(idf.TransformError, match="container name"):
        idf.image_definitions(name, "u@" + DIGEST)


def test_image_definitions_enforces_the_100_kb_limit():
    with pytest.raises(idf.TransformError, match="bytes; CodePipeline needs under 102400"):
        idf.image_definitions("app", "x" * idf.MAX_BYTES)


# --- wait_for_replication against moto ------------------------------------------------------------------------


class FakeTime:
    """Injected clock/sleep: the wait logic runs for real, the seconds do not."""

    def __init__(self, on_sleep=None):
        self.now, self.sleeps, self.on_sleep = 1000.0, [], on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.sleeps))


@mock_aws
def test_wait_returns_once_the_replica_appears(aws_env):
    digest = push(HOME, "orders")
    boto3.client("ecr", region_name="eu-west-1").create_repository(repositoryName="orders")
    # Replication "completes" during the second sleep.
    fake = FakeTime(on_sleep=lambda n: n == 2 and push("eu-west-1", "orders"))
    ecr = boto3.client("ecr", region_name="eu-west-1")
    waited = idf.wait_for_replication(ecr, ACCOUNT, "orders", digest, "eu-west-1", 60, 10, fake.sleep, fake.clock)
    assert fake.sleeps == [10, 10] and waited == 20


@mock_aws
def test_wait_needs_no_sleep_when_already_there(aws_env):
    digest = push("eu-west-1", "orders")
    fake = FakeTime()
    ecr = boto3.client("ecr", region_name="eu-west-1")
    assert idf.wait_for_replication(ecr, ACCOUNT, "orders", digest, "eu-west-1", 0, 10, fake.sleep, fake.clock) == 0
    assert fake.sleeps == []


@pytest.mark.parametrize("repository_exists", [True, False], ids=["image-missing", "repository-missing"])
@mock_aws
def test_wait_times_out_with_a_clear_message(aws_env, repository_exists):
    digest = push(HOME, "orders")
    if repository_exists:
        boto3.client("ecr", region_name="ap-southeast-2").create_repository(repositoryName="orders")
    fake = FakeTime()
    ecr = boto3.client("ecr", region_name="ap-southeast-2")
    with pytest.raises(idf.ReplicationTimeout) as caught:
        idf.wait_for_replication(ecr, ACCOUNT, "orders", digest, "ap-southeast-2", 25, 10, fake.sleep, fake.clock)
    assert fake.sleeps == [10, 10, 5]  # bounded: the last sleep stops at the deadline
    message = str(caught.value)
    assert "ap-southeast-2" in message and f"orders@{digest}" in message and "25.0s" in message


def test_wait_lets_other_errors_through(aws_env):
    ecr = boto3.client("ecr", region_name="eu-west-1")
    with Stubber(ecr) as stub:
        stub.add_client_error("describe_images", "AccessDeniedException", "not authorized")
        with pytest.raises(ecr.exceptions.ClientError, match="AccessDenied"):
            idf.wait_for_replication(ecr, ACCOUNT, "orders", DIGEST, "eu-west-1", 60, 10, lambda s: None, lambda: 0.0)


# --- main(): the CLI the buildspec runs -----------------------------------------------------------------------


def _write(path: Path, detail) -> Path:
    path.write_text(json.dumps(detail) if not isinstance(detail, str) else detail)
    return path


def _argv(detail_path: Path, out: Path, regions=REGIONS, home=HOME, *extra: str) -> list[str]:
    return [
        f"--image-detail={detail_path}",
        "--container-name=sample-app",
        f"--regions={','.join(regions)}",
        f"--home-region={home}",
        f"--output-dir={out}",
        *extra,
    ]


@mock_aws
def test_main_writes_one_pinned_file_per_region(aws_env, make_detail, raw_sample, tmp_path, capsys):
    repo = raw_sample["RepositoryName"]
    (digest,) = {push(r, repo) for r in REGIONS}  # replicas keep the digest
    out = tmp_path / "out"
    assert idf.main(_argv(_write(tmp_path / "imageDetail.json", make_detail(digest)), out)) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"imagedefinitions-{r}.json" for r in REGIONS)
    for region in REGIONS:
        written = json.loads((out / f"imagedefinitions-{region}.json").read_text())
        assert written == [
            {"name": "sample-app", "imageUri": f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repo}@{digest}"}
        ]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(REGIONS) and all(line.startswith("wrote imagedefinitions-") for line in lines)


@mock_aws
def test_main_reads_the_environment_like_codebuild(aws_env, make_detail, tmp_path, monkeypatch):
    # The home region alone needs no ECR call at all: the ECR source action already saw the image there.
    monkeypatch.setenv("CODEBUILD_SRC_DIR", str(tmp_path))
    monkeypatch.setenv("CONTAINER_NAME", "sample-app")
    monkeypatch.setenv("TARGET_REGIONS", HOME)
    monkeypatch.setenv("HOME_REGION", HOME)
    _write(tmp_path / "imageDetail.json", make_detail())
    assert idf.main([]) == 0
    assert json.loads((tmp_path / f"imagedefinitions-{HOME}.json").read_text())[0]["imageUri"].endswith(DIGEST)


# Each case: (raw sample, rewritten sample) -> file content, argv changes, expected text of the one error line.
BAD_MAIN_INPUTS = {
    "raw sample": (lambda raw, d: raw, {}, "ImageURI 'ACCOUNTID."),
    "invalid JSON": (lambda raw, d: "{not json", {}, "not valid JSON"),
    "digest disagrees": (lambda raw, d: {**d, "ImageDigest": "sha256:" + "0" * 64}, {}, "ImageDigest 'sha256:000"),
    "home region differs": (None, {"home": "us-east-2"}, "home region is us-east-2"),
    "duplicate regions": (None, {"regions": [HOME, "eu-west-1", HOME]}, "unique"),
    "bad region": (None, {"regions": [HOME, "Mars-1"]}, "not an AWS region name"),
    "no regions": (None, {"regions": []}, "non-empty"),
    "bad container": (None, {"extra": ["--container-name=bad name"]}, "container name"),
    "negative timeout": (None, {"extra": ["--timeout=-1"]}, "timeout must be"),
    "zero interval": (None, {"extra": ["--interval=0"]}, "poll interval must be"),
}


@pytest.mark.parametrize("case", BAD_MAIN_INPUTS, ids=list(BAD_MAIN_INPUTS))
def test_main_bad_input_writes_nothing(case, aws_env, raw_sample, make_detail, tmp_path, capsys):
    mutate, options, expected = BAD_MAIN_INPUTS[case]
    detail = mutate(raw_sample, make_detail()) if mutate else make_detail()
    out = tmp_path / "out"
    argv = _argv(
        _write(tmp_path / "imageDetail.json", detail),
        out,
        options.get("regions", REGIONS),
        options.get("home", HOME),
        *options.get("extra", []),
    )
    assert idf.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert not out.exists()


def test_main_missing_file_is_one_line(aws_env, tmp_path, capsys):
    assert idf.main(_argv(tmp_path / "absent.json", tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and "not found" in err and err.count("\n") == 1


@mock_aws
def test_main_timeout_writes_nothing(aws_env, make_detail, raw_sample, tmp_path, capsys):
    digest = push(HOME, raw_sample["RepositoryName"])  # never replicated anywhere
    out = tmp_path / "out"
    argv = _argv(_write(tmp_path / "d.json", make_detail(digest)), out, REGIONS, HOME, "--timeout=0")
    assert idf.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and "not replicated to eu-west-1" in err and digest in err
    assert not out.exists()


# --- the buildspec, run for real -------------------------------------------------------------------------------


def test_render_buildspec_shape_and_embedded_source():
    spec = yaml.safe_load(render_buildspec(container_name="sample-app", target_regions=REGIONS, home_region=HOME))
    assert spec["version"] == 0.2
    assert spec["env"]["variables"] == {
        "CONTAINER_NAME": "sample-app",
        "TARGET_REGIONS": ",".join(REGIONS),
        "HOME_REGION": HOME,
        "REPLICATION_TIMEOUT_SECONDS": "600",
    }
    assert spec["artifacts"] == {"files": [f"imagedefinitions-{r}.json" for r in REGIONS], "discard-paths": True}
    (command,) = spec["phases"]["build"]["commands"]
    heredoc = re.search(r"<<'(?P<delim>\w+)'\n(?P<body>.*\n)(?P=delim)\n", command, re.S)
    assert heredoc, command[:200]
    assert heredoc["body"].encode() == HANDLER_PATH.read_bytes()


BAD_RENDER_ARGS = {
    "empty container": {"container_name": ""},
    "container with space": {"container_name": "a b"},
    "no regions": {"target_regions": []},
    "regions as a string": {"target_regions": "us-east-1"},
    "duplicate regions": {"target_regions": [HOME, HOME]},
    "bad region": {"target_regions": ["us_east_1"]},
    "empty home region": {"home_region": ""},
    "negative timeout": {"timeout_seconds": -1},
    "timeout past Lambda's 15 minutes": {"timeout_seconds": 900},
    "bool timeout": {"timeout_seconds": True},
}


@pytest.mark.parametrize("case", BAD_RENDER_ARGS, ids=list(BAD_RENDER_ARGS))
def test_render_buildspec_refuses_bad_arguments(case):
    kwargs = {"container_name": "app", "target_regions": [HOME], "home_region": HOME, **BAD_RENDER_ARGS[case]}
    with pytest.raises(ValueError):
        render_buildspec(**kwargs)


@pytest.fixture(scope="module")
def moto_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def run_buildspec(buildspec: str, workdir: Path, endpoint: str) -> subprocess.CompletedProcess:
    """Run the build phase the way CodeBuild does: in the source dir, with env.variables set, commands in bash."""
    spec = yaml.safe_load(buildspec)
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "CODEBUILD_SRC_DIR": str(workdir),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": HOME,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        **spec["env"]["variables"],
    }
    (workdir / "tmp").mkdir()
    script = "\n".join(spec["phases"]["build"]["commands"])
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_buildspec_runs_end_to_end(moto_server, make_detail, raw_sample, tmp_path, aws_env):
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).close()
    repo = raw_sample["RepositoryName"]
    digests = {push(r, repo, endpoint_url=moto_server) for r in REGIONS}
    (digest,) = digests
    _write(tmp_path / "imageDetail.json", make_detail(digest))
    buildspec = render_buildspec(container_name="sample-app", target_regions=REGIONS, home_region=HOME)

    result = run_buildspec(buildspec, tmp_path, moto_server)

    assert result.returncode == 0, result.stderr
    # mktemp wrote the script under TMPDIR: the quoted heredoc must have produced the handler byte for byte.
    (script,) = (tmp_path / "tmp").iterdir()
    assert script.read_bytes() == HANDLER_PATH.read_bytes()
    for artifact in yaml.safe_load(buildspec)["artifacts"]["files"]:
        region = artifact.removeprefix("imagedefinitions-").removesuffix(".json")
        assert json.loads((tmp_path / artifact).read_text()) == [
            {"name": "sample-app", "imageUri": f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repo}@{digest}"}
        ]
    assert result.stdout.count("wrote imagedefinitions-") == len(REGIONS)


def test_buildspec_fails_clearly_when_a_region_lacks_the_image(moto_server, make_detail, raw_sample, tmp_path, aws_env):
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).close()
    repo = raw_sample["RepositoryName"]
    (digest,) = {push(r, repo, endpoint_url=moto_server) for r in (HOME, "eu-west-1")}  # not ap-southeast-2
    _write(tmp_path / "imageDetail.json", make_detail(digest))
    buildspec = render_buildspec(
        container_name="sample-app", target_regions=REGIONS, home_region=HOME, timeout_seconds=1
    )

    result = run_buildspec(buildspec, tmp_path, moto_server)

    assert result.returncode != 0
    assert result.stderr.startswith("ERROR: ") and result.stderr.count("\n") == 1, result.stderr
    assert f"{repo}@{digest} not replicated to ap-southeast-2" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("imagedefinitions-*.json"))


# --- blue/green mode: taskdef.json, appspec.yaml and a regional imageDetail.json per artifact ---------------------

TOOLS_ACCOUNT = "111111111111"
WORKLOAD_ACCOUNT = "777788889999"
# A service with everything that ends up in a task definition, including text a shell or YAML could mangle.
SERVICE = {
    "name": "sample-app",
    "port": 8080,
    "cpu": 512,
    "memory": 1024,
    "environment": {"GREETING": "it's $5 `now` \\o/ \"quoted\"", "MODE": "blue: green"},
    "secrets": {"DB_PASSWORD": "db/password", "API_KEY": "ssm:/app/key"},
    "healthCheck": {"command": ["CMD-SHELL", "curl -f http://localhost:$PORT/ || exit 1"]},
}
ECS_REGISTER = (
    botocore.session.get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition").input_shape
)


def stack_config(regions=REGIONS, service=SERVICE):
    return parse({"tools": {"accountId": TOOLS_ACCOUNT, "region": HOME},
                  "environments": [{"name": "prod", "accountId": WORKLOAD_ACCOUNT, "regions": list(regions),
                                    "strategy": "codedeploy"}],
                  "services": [service]}, project="crossdeploy", stack="test", aws_region=HOME)


def bg_target(region: str, **changes) -> dict:
    """A handler target built from the real task definition crossdeploy generates for `region`."""
    cfg = stack_config()
    service = cfg.services[0]
    target = {
        "artifact": f"BlueGreen-prod-{region}",
        "region": region,
        "taskDefinition": task_definition(cfg, WORKLOAD_ACCOUNT, region, service, IMAGE_PLACEHOLDER),
        "containerName": service.container,
        "containerPort": service.port,
    }
    target.update(changes)
    return target


def assert_registrable(taskdef_text: str, image: str) -> dict:
    """taskdef.json, with the image the action substitutes, is a valid RegisterTaskDefinition request."""
    assert taskdef_text.count(idf.IMAGE_PLACEHOLDER) == 1
    request = json.loads(taskdef_text.replace(idf.IMAGE_PLACEHOLDER, image))
    report = ParamValidator().validate(request, ECS_REGISTER)
    assert not report.has_errors(), report.generate_report()
    return request


def assert_appspec_matches(appspec_text: str, taskdef: dict) -> dict:
    """The documented ECS AppSpec shape, naming the container that gets the new image and one of its ports."""
    spec = yaml.safe_load(appspec_text)
    assert set(spec) == {"version", "Resources"} and spec["version"] == 0.0
    (resource,) = spec["Resources"]
    assert list(resource) == ["TargetService"]
    assert resource["TargetService"]["Type"] == "AWS::ECS::Service"
    properties = resource["TargetService"]["Properties"]
    assert set(properties) == {"TaskDefinition", "LoadBalancerInfo"}
    assert properties["TaskDefinition"] == "<TASK_DEFINITION>"
    lb = properties["LoadBalancerInfo"]
    (container,) = [c for c in taskdef["containerDefinitions"] if c["image"] == IMAGE_PLACEHOLDER]
    assert lb["ContainerName"] == container["name"]
    assert type(lb["ContainerPort"]) is int
    assert lb["ContainerPort"] in [m["containerPort"] for m in container["portMappings"]]
    return lb


def assert_artifact(directory: Path, target: dict, source_detail: dict, digest: str) -> None:
    assert sorted(p.name for p in directory.iterdir()) == sorted(["taskdef.json", "appspec.yaml", "imageDetail.json"])
    region, repo = target["region"], source_detail["RepositoryName"]
    replica = f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{repo}@{digest}"
    taskdef_text = (directory / "taskdef.json").read_text()
    assert json.loads(taskdef_text) == target["taskDefinition"]
    request = assert_registrable(taskdef_text, replica)
    assert request["containerDefinitions"][0]["logConfiguration"]["options"]["awslogs-region"] == region
    lb = assert_appspec_matches((directory / "appspec.yaml").read_text(), target["taskDefinition"])
    assert (lb["ContainerName"], lb["ContainerPort"]) == (target["containerName"], target["containerPort"])
    written = json.loads((directory / "imageDetail.json").read_text())
    assert written["ImageURI"] == replica
    assert {k: v for k, v in written.items() if k != "ImageURI"} == {
        k: v for k, v in source_detail.items() if k != "ImageURI"}, "every other field as the source wrote it"


def test_the_ecs_model_check_can_fail():
    taskdef = json.dumps({**bg_target(HOME)["taskDefinition"], "cpu": 512})  # an int where ECS wants a string
    with pytest.raises(AssertionError, match="cpu"):
        assert_registrable(taskdef, "x@" + DIGEST)


def test_appspec_text_is_the_documented_structure():
    taskdef = bg_target(HOME)["taskDefinition"]
    lb = assert_appspec_matches(idf.appspec("sample-app", 8080), taskdef)
    assert lb == {"ContainerName": "sample-app", "ContainerPort": 8080}


def _hook_arn(region: str) -> str:
    return f"arn:aws:lambda:{region}:{WORKLOAD_ACCOUNT}:function:crossdeploy-test-prod-smoke-test"


def test_appspec_runs_the_smoke_hook_after_test_traffic():
    """AWS's ECS AppSpec: ``Hooks`` is a list of one-key maps, lifecycle event -> Lambda function."""
    spec = yaml.safe_load(idf.appspec("sample-app", 8080, _hook_arn(HOME)))
    assert spec["Hooks"] == [{"AfterAllowTestTraffic": _hook_arn(HOME)}]
    assert {k: v for k, v in spec.items() if k != "Hooks"} == yaml.safe_load(idf.appspec("sample-app", 8080))


def test_blue_green_target_with_a_smoke_hook_writes_it_into_the_appspec(aws_env, make_detail, tmp_path):
    target = bg_target(HOME, smokeHookArn=_hook_arn(HOME))
    plain = bg_target(HOME, artifact="Plain")
    argv = [f"--image-detail={_write(tmp_path / 'imageDetail.json', make_detail())}", f"--home-region={HOME}",
            f"--output-dir={tmp_path / 'out'}", f"--blue-green-targets={json.dumps([target, plain])}"]
    assert idf.main(argv) == 0
    hooked = yaml.safe_load((tmp_path / "out" / target["artifact"] / "appspec.yaml").read_text())
    assert hooked["Hooks"] == [{"AfterAllowTestTraffic": _hook_arn(HOME)}]
    assert "Hooks" not in yaml.safe_load((tmp_path / "out" / "Plain" / "appspec.yaml").read_text())


@mock_aws
def test_blue_green_main_writes_one_artifact_directory_per_target(aws_env, make_detail, raw_sample, tmp_path,
                                                                  capsys):
    repo = raw_sample["RepositoryName"]
    (digest,) = {push(r, repo) for r in REGIONS}
    targets = [bg_target(r) for r in REGIONS]
    detail = make_detail(digest)
    out = tmp_path / "out"
    argv = [f"--image-detail={_write(tmp_path / 'imageDetail.json', detail)}", f"--home-region={HOME}",
            f"--output-dir={out}", f"--blue-green-targets={json.dumps(targets)}"]
    assert idf.main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(t["artifact"] for t in targets)
    for target in targets:
        assert_artifact(out / target["artifact"], target, detail, digest)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(targets) and all(line.startswith("wrote BlueGreen-prod-") for line in lines)


@mock_aws
def test_blue_green_main_reads_the_environment_like_codebuild(aws_env, make_detail, tmp_path, monkeypatch):
    target = bg_target(HOME)
    monkeypatch.setenv("CODEBUILD_SRC_DIR", str(tmp_path))
    monkeypatch.setenv("BLUE_GREEN_TARGETS", json.dumps([target]))
    monkeypatch.setenv("HOME_REGION", HOME)
    # Stray rolling inputs in the build environment are not looked at (eu-west-1 would need an ECR call).
    monkeypatch.setenv("CONTAINER_NAME", "stray")
    monkeypatch.setenv("TARGET_REGIONS", "eu-west-1")
    detail = make_detail()
    _write(tmp_path / "imageDetail.json", detail)
    assert idf.main([]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [target["artifact"]]
    assert_artifact(tmp_path / target["artifact"], target, detail, DIGEST)


def _taskdef_with(container_changes: dict | None = None, extra_container: dict | None = None, **top) -> dict:
    taskdef = json.loads(json.dumps(bg_target(HOME)["taskDefinition"]))
    taskdef["containerDefinitions"][0].update(container_changes or {})
    if extra_container:
        taskdef["containerDefinitions"].append(extra_container)
    taskdef.update(top)
    return taskdef


SIDECAR = {"name": "sidecar", "image": "public.ecr.aws/nginx/nginx:1", "essential": False}
# Each case: BLUE_GREEN_TARGETS text (from the list of good targets), expected text of the one error line.
BAD_BLUE_GREEN_TARGETS = {
    "not JSON": (lambda ts: "[{", "not valid JSON"),
    "empty list": (lambda ts: "[]", "non-empty JSON list"),
    "an object, not a list": (lambda ts: json.dumps(ts[0]), "non-empty JSON list"),
    "target not an object": (lambda ts: json.dumps([*ts, "x"]), "target 3: must be a JSON object"),
    "missing key": (lambda ts: json.dumps([{k: v for k, v in ts[0].items() if k != "containerPort"}]),
                    "missing keys ['containerPort']"),
    "unknown key": (lambda ts: json.dumps([{**ts[0], "containerPorts": 1}]), "unknown keys ['containerPorts']"),
    "artifact with a slash": (lambda ts: json.dumps([{**ts[0], "artifact": "../escape"}]), "artifact '../escape'"),
    "artifact too long": (lambda ts: json.dumps([{**ts[0], "artifact": "a" * 101}]), "1-100 letters"),
    "artifact repeated": (lambda ts: json.dumps([ts[0], {**ts[1], "artifact": ts[0]["artifact"]}]), "repeated"),
    "bad region": (lambda ts: json.dumps([{**ts[0], "region": "Mars-1"}]), "not an AWS region name: 'Mars-1'"),
    "bad container name": (lambda ts: json.dumps([{**ts[0], "containerName": "a b"}]), "containerName 'a b'"),
    "port as a string": (lambda ts: json.dumps([{**ts[0], "containerPort": "8080"}]), "containerPort must be"),
    "port as a bool": (lambda ts: json.dumps([{**ts[0], "containerPort": True}]), "containerPort must be"),
    "port out of range": (lambda ts: json.dumps([{**ts[0], "containerPort": 70000}]), "containerPort must be"),
    "taskdef not an object": (lambda ts: json.dumps([{**ts[0], "taskDefinition": []}]), "must be a JSON object"),
    "taskdef without family": (lambda ts: json.dumps([{**ts[0], "taskDefinition": _taskdef_with(family="")}]),
                               "family is missing"),
    "taskdef without containers": (
        lambda ts: json.dumps([{**ts[0], "taskDefinition": _taskdef_with(containerDefinitions=[])}]),
        "containerDefinitions must be"),
    "no placeholder": (lambda ts: json.dumps([{**ts[0], "taskDefinition": _taskdef_with({"image": "x:1"})}]),
                       "found it 0 time(s)"),
    "placeholder twice": (
        lambda ts: json.dumps([{**ts[0], "taskDefinition": _taskdef_with(
            extra_container={**SIDECAR, "image": IMAGE_PLACEHOLDER})}]), "found it 2 time(s)"),
    "placeholder outside an image": (
        lambda ts: json.dumps([{**ts[0], "taskDefinition": _taskdef_with(
            {"environment": [{"name": "IMG", "value": IMAGE_PLACEHOLDER}]})}]), "found it 2 time(s)"),
    "placeholder on another container": (
        lambda ts: json.dumps([{**ts[0], "taskDefinition": _taskdef_with(
            {"image": "x:1"}, extra_container={**SIDECAR, "image": IMAGE_PLACEHOLDER})}]),
        "is 'sidecar', but containerName"),
    "port not mapped": (lambda ts: json.dumps([{**ts[0], "containerPort": 9090}]),
                        "containerPort 9090 is not among"),
    "second target bad": (lambda ts: json.dumps([ts[0], {**ts[1], "containerPort": 9090}]),
                          f"target BlueGreen-prod-{REGIONS[1]}: containerPort 9090"),
    "smoke hook not a function": (
        lambda ts: json.dumps([{**ts[0], "smokeHookArn": f"arn:aws:sns:{REGIONS[0]}:{WORKLOAD_ACCOUNT}:hook"}]),
        "smokeHookArn must be a Lambda function ARN"),
    "smoke hook in another region": (
        lambda ts: json.dumps([{**ts[0], "smokeHookArn": _hook_arn(REGIONS[1])}]),
        f"smokeHookArn must be a Lambda function ARN in {REGIONS[0]}"),
    "smoke hook not a string": (lambda ts: json.dumps([{**ts[0], "smokeHookArn": ["x"]}]),
                                "smokeHookArn must be a Lambda function ARN"),
}


@pytest.mark.parametrize("case", BAD_BLUE_GREEN_TARGETS, ids=list(BAD_BLUE_GREEN_TARGETS))
def test_blue_green_bad_targets_write_nothing(case, aws_env, make_detail, tmp_path, capsys):
    make_text, expected = BAD_BLUE_GREEN_TARGETS[case]
    text = make_text([bg_target(r) for r in REGIONS])
    out = tmp_path / "out"
    argv = [f"--image-detail={_write(tmp_path / 'imageDetail.json', make_detail())}", f"--home-region={HOME}",
            f"--output-dir={out}", f"--blue-green-targets={text}"]
    assert idf.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert not out.exists()


BAD_BLUE_GREEN_RUNS = {
    "raw sample": (lambda raw, d: raw, [], "ImageURI 'ACCOUNTID."),
    "home region differs": (None, ["--home-region=us-east-2"], "home region is us-east-2"),
    "bad home region": (None, ["--home-region=home"], "home region must be"),
    "negative timeout": (None, ["--timeout=-1"], "timeout must be"),
}


@pytest.mark.parametrize("case", BAD_BLUE_GREEN_RUNS, ids=list(BAD_BLUE_GREEN_RUNS))
def test_blue_green_bad_runs_write_nothing(case, aws_env, raw_sample, make_detail, tmp_path, capsys):
    mutate, extra, expected = BAD_BLUE_GREEN_RUNS[case]
    detail = mutate(raw_sample, make_detail()) if mutate else make_detail()
    out = tmp_path / "out"
    argv = [f"--image-detail={_write(tmp_path / 'imageDetail.json', detail)}", f"--home-region={HOME}",
            f"--output-dir={out}", f"--blue-green-targets={json.dumps([bg_target(HOME)])}", *extra]
    assert idf.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and err.count("\n") == 1 and expected in err, err
    assert not out.exists()


@mock_aws
def test_blue_green_timeout_writes_nothing(aws_env, make_detail, raw_sample, tmp_path, capsys):
    digest = push(HOME, raw_sample["RepositoryName"])  # never replicated anywhere
    out = tmp_path / "out"
    argv = [f"--image-detail={_write(tmp_path / 'd.json', make_detail(digest))}", f"--home-region={HOME}",
            f"--output-dir={out}", "--timeout=0",
            f"--blue-green-targets={json.dumps([bg_target(r) for r in REGIONS])}"]
    assert idf.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and "not replicated to eu-west-1" in err and digest in err
    assert not out.exists()


# --- the blue/green buildspec, rendered and run -----------------------------------------------------------------


def test_blue_green_buildspec_with_several_targets_uses_secondary_artifacts():
    targets = [bg_target(r) for r in REGIONS]
    spec = yaml.safe_load(render_blue_green_buildspec(targets=targets, home_region=HOME))
    assert spec["version"] == 0.2
    variables = spec["env"]["variables"]
    assert set(variables) == {"BLUE_GREEN_TARGETS", "HOME_REGION", "REPLICATION_TIMEOUT_SECONDS"}
    assert json.loads(variables["BLUE_GREEN_TARGETS"]) == targets
    assert "$" not in variables["BLUE_GREEN_TARGETS"], "no '$' for anything between buildspec and handler to expand"
    assert (variables["HOME_REGION"], variables["REPLICATION_TIMEOUT_SECONDS"]) == (HOME, "600")
    # CodePipeline: with several output artifacts, each is a secondary artifact named like the output artifact.
    assert spec["artifacts"] == {"secondary-artifacts": {
        t["artifact"]: {"base-directory": t["artifact"], "files": ["taskdef.json", "appspec.yaml", "imageDetail.json"]}
        for t in targets}}


def test_blue_green_buildspec_with_one_target_uses_the_primary_artifact():
    (target,) = targets = [bg_target(HOME)]
    spec = yaml.safe_load(render_blue_green_buildspec(targets=targets, home_region=HOME, timeout_seconds=30))
    assert spec["artifacts"] == {"base-directory": target["artifact"],
                                 "files": ["taskdef.json", "appspec.yaml", "imageDetail.json"]}
    assert spec["env"]["variables"]["REPLICATION_TIMEOUT_SECONDS"] == "30"


def test_both_buildspecs_share_one_command_block():
    rolling = yaml.safe_load(render_buildspec(container_name="sample-app", target_regions=REGIONS, home_region=HOME))
    blue_green = yaml.safe_load(render_blue_green_buildspec(targets=[bg_target(HOME)], home_region=HOME))
    assert blue_green["phases"] == rolling["phases"]
    (command,) = blue_green["phases"]["build"]["commands"]
    assert HANDLER_PATH.read_text() in command


BAD_BLUE_GREEN_RENDER_ARGS = {
    "no targets": {"targets": []},
    "six targets": {"targets": [bg_target(HOME, artifact=f"a{i}") for i in range(6)]},
    "a dict, not a list": {"targets": bg_target(HOME)},
    "target the handler refuses": {"targets": [bg_target(HOME, containerPort=1)]},
    "bad home region": {"home_region": "home"},
    "timeout past Lambda's 15 minutes": {"timeout_seconds": 900},
}


@pytest.mark.parametrize("case", BAD_BLUE_GREEN_RENDER_ARGS, ids=list(BAD_BLUE_GREEN_RENDER_ARGS))
def test_blue_green_buildspec_refuses_bad_arguments(case):
    kwargs = {"targets": [bg_target(HOME)], "home_region": HOME, **BAD_BLUE_GREEN_RENDER_ARGS[case]}
    with pytest.raises(ValueError):
        render_blue_green_buildspec(**kwargs)


def artifact_directories(buildspec: str, workdir: Path) -> dict[str, Path]:
    """Output artifact name -> the directory CodeBuild would upload for it (base-directory is relative to the
    primary source directory); a single output is the primary artifact."""
    artifacts = yaml.safe_load(buildspec)["artifacts"]
    sections = artifacts.get("secondary-artifacts") or {None: artifacts}
    return {name: workdir / section["base-directory"] for name, section in sections.items()}


def test_blue_green_buildspec_runs_end_to_end(moto_server, make_detail, raw_sample, tmp_path, aws_env):
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).close()
    repo = raw_sample["RepositoryName"]
    (digest,) = {push(r, repo, endpoint_url=moto_server) for r in REGIONS}
    detail = make_detail(digest)
    _write(tmp_path / "imageDetail.json", detail)
    targets = [bg_target(r) for r in REGIONS]
    buildspec = render_blue_green_buildspec(targets=targets, home_region=HOME)

    result = run_buildspec(buildspec, tmp_path, moto_server)

    assert result.returncode == 0, result.stderr
    directories = artifact_directories(buildspec, tmp_path)
    assert set(directories) == {t["artifact"] for t in targets}
    for target in targets:
        assert_artifact(directories[target["artifact"]], target, detail, digest)
    assert result.stdout.count("wrote BlueGreen-prod-") == len(targets)


def test_single_target_buildspec_runs_in_the_home_region_without_aws(make_detail, tmp_path, aws_env):
    detail = make_detail()
    _write(tmp_path / "imageDetail.json", detail)
    (target,) = targets = [bg_target(HOME)]
    buildspec = render_blue_green_buildspec(targets=targets, home_region=HOME)

    # An endpoint nothing listens on: any AWS call would fail the build.
    result = run_buildspec(buildspec, tmp_path, "http://127.0.0.1:9")

    assert result.returncode == 0, result.stderr
    (directory,) = artifact_directories(buildspec, tmp_path).values()
    assert_artifact(directory, target, detail, DIGEST)


def test_blue_green_buildspec_fails_clearly_when_a_region_lacks_the_image(moto_server, make_detail, raw_sample,
                                                                          tmp_path, aws_env):
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).close()
    repo = raw_sample["RepositoryName"]
    (digest,) = {push(r, repo, endpoint_url=moto_server) for r in (HOME, "eu-west-1")}  # not ap-southeast-2
    _write(tmp_path / "imageDetail.json", make_detail(digest))
    buildspec = render_blue_green_buildspec(targets=[bg_target(r) for r in REGIONS], home_region=HOME,
                                            timeout_seconds=1)

    result = run_buildspec(buildspec, tmp_path, moto_server)

    assert result.returncode != 0
    assert result.stderr.startswith("ERROR: ") and result.stderr.count("\n") == 1, result.stderr
    assert f"{repo}@{digest} not replicated to ap-southeast-2" in result.stderr
    assert not any(d.exists() for d in artifact_directories(buildspec, tmp_path).values()), "no partial artifact"
