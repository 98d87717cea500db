"""The release file (deployment.yaml) validator and converter: the seed sample, every broken case at its line, the
context it is checked against, and the CLI the build step and pull requests run."""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import PROD, QA, ROOT, SAMPLES, TOOLS

from handlers import release_file as rf

ROLE = "arn:aws:iam::{}:role/crossdeploy/test/deploy/crossdeploy-test-deploy"
CONTEXT = {
    "version": 1,
    "partition": "aws",
    "registryId": TOOLS,
    "homeRegion": "us-east-2",
    "environments": {
        "qa": {"accountId": QA, "regions": ["us-east-2"], "deployRoleArn": ROLE.format(QA)},
        "prod": {"accountId": PROD, "regions": ["us-east-2", "eu-west-1"], "deployRoleArn": ROLE.format(PROD)},
    },
}
CTX = rf.load_context(CONTEXT)
SEED = (SAMPLES / "deployment.yaml").read_text(encoding="utf-8")
IMAGE = f"{TOOLS}.dkr.ecr.us-east-1.amazonaws.com/movie-info-service:4.0.0"
DIGEST = "sha256:" + "ab" * 32


def extended_seed() -> str:
    """The seed as a team would extend it: its image account fixed to 12 digits (the sample's has 11), the task in
    qa, the service in prod (two regions). Everything else is the sample's, line for line."""
    lines = SEED.replace("11111111111.dkr", f"{TOOLS}.dkr").splitlines(keepends=True)
    assert SEED.count("11111111111.dkr") == 2
    out = []
    for line in lines:
        out.append(line)
        if line.strip().startswith("cwRuleName:"):
            out.append("    environment: qa\n")
        if line.strip().startswith("serviceName:"):
            out.append("    environment: prod\n")
    return "".join(out)


def found(text: str | bytes, context: rf.ReleaseContext = CTX) -> list[tuple[int, str]]:
    return [(p.line, p.path) for p in rf.validate(text, context)]


def messages(text: str | bytes) -> str:
    return "\n".join(map(str, rf.validate(text, CTX)))


def service(**fields: str) -> str:
    """One services entry (valid unless fields say otherwise); a field set to None is left out."""
    values = {"service": "svc", "clusterName": "core", "serviceName": "api", "image": f'"{IMAGE}"',
              "environment": "qa", **fields}
    body = "".join(f"    {k}: {v}\n" for k, v in values.items() if v is not None)
    return "  - " + body[4:]


# ------------------------------------------------------------------------------------------------ the seed sample


def test_seed_as_shipped_reports_exactly_its_problems_with_lines() -> None:
    problems = rf.validate(SEED, CTX, "deployment.yaml")
    assert [str(p) for p in problems] == [
        "deployment.yaml:2: tasks[0]: needs environment (one of: qa, prod), or accountId and region",
        "deployment.yaml:4: tasks[0].image: registry '11111111111' is not a 12-digit account id "
        f"(the tools registry is {TOOLS})",
        "deployment.yaml:6: services[0]: needs environment (one of: qa, prod), or accountId and region",
        "deployment.yaml:9: services[0].image: registry '11111111111' is not a 12-digit account id "
        f"(the tools registry is {TOOLS})",
    ]


def test_seed_extended_with_environment_validates_and_converts() -> None:
    text = extended_seed()
    assert rf.validate(text, CTX) == []
    image = {"registryId": TOOLS, "repository": "movie-info-service", "tag": "4.0.0", "digest": None}
    service_a = {"name": "service-a", "line": 7, "accountId": PROD, "roleArn": ROLE.format(PROD),
                 "cluster": "test-Cluster-0IEYQ2GqGmL7", "service": "test-movie-info-service-Service-TALkUbJVrBgS",
                 "container": None, "image": image}
    assert rf.convert(text, CONTEXT, "deployment.yaml") == {
        "version": 1,
        "source": "deployment.yaml",
        # prod has two regions: one target each, in the environment's order; the URI's us-east-1 is not kept
        "services": [{**service_a, "region": "us-east-2"}, {**service_a, "region": "eu-west-1"}],
        "tasks": [{"name": "rating-cleanup", "line": 2, "accountId": QA, "region": "us-east-2",
                   "roleArn": ROLE.format(QA), "ruleName": "test-rating-cleanup", "eventBus": "default",
                   "container": None,
                   "image": {"registryId": TOOLS, "repository": "rating-cleanup", "tag": "2.0.0", "digest": None}}],
    }


def test_explicit_account_region_digest_container_and_event_bus() -> None:
    text = textwrap.dedent(f"""\
        tasks:
          - service: nightly
            cwRuleName: nightly-report
            image: "{TOOLS}.dkr.ecr.us-east-2.amazonaws.com/team/reports@{DIGEST}"
            accountId: "{PROD}"
            region: eu-west-1
            container: app
            eventBus: ops-bus
        services:
          - service: api
            clusterName: core
            serviceName: api
            image: &img "{TOOLS}.dkr.ecr.us-east-2.amazonaws.com/api:1.2.3"
            environment: prod
            region: eu-west-1
          - service: api
            clusterName: core
            serviceName: api
            image: *img
            environment: qa
        """)
    manifest = rf.convert(text, CTX)
    assert manifest["tasks"] == [{
        "name": "nightly", "line": 2, "accountId": PROD, "region": "eu-west-1", "roleArn": ROLE.format(PROD),
        "ruleName": "nightly-report", "eventBus": "ops-bus", "container": "app",
        "image": {"registryId": TOOLS, "repository": "team/reports", "tag": None, "digest": DIGEST}}]
    # Same cluster and service names in different accounts are different targets; an alias reuses a value.
    assert [(s["line"], s["accountId"], s["region"]) for s in manifest["services"]] == [
        (10, PROD, "eu-west-1"), (16, QA, "us-east-2")]
    assert manifest["services"][1]["image"]["tag"] == "1.2.3"


# ------------------------------------------------------------------------------------------------ broken files


BROKEN = {
    "unknown key (typo)": (
        "services:\n" + service(image=None, imgae=f'"{IMAGE}"'),
        [(2, "services[0].image"), (6, "services[0].imgae")], "did you mean 'image'?"),
    "key of the other kind": (
        "services:\n" + service(cwRuleName="r"), [(7, "services[0].cwRuleName")], "tasks entries have it"),
    "unknown top-level key": (
        "service:\n" + service(), [(1, "service")], "did you mean 'services'?"),
    "missing required key": (
        "tasks:\n  - service: t\n    image: \"" + IMAGE + "\"\n    environment: qa\n",
        [(2, "tasks[0].cwRuleName")], "required key is missing"),
    "unknown environment": (
        "services:\n" + service(environment="staging"), [(6, "services[0].environment")],
        "unknown environment 'staging'; this stack's environments are: qa, prod"),
    "both environment and accountId": (
        "services:\n" + service(accountId=f'"{QA}"', region="us-east-2"), [(7, "services[0].accountId")],
        "not both"),
    "account of no environment": (
        "services:\n" + service(environment=None, accountId='"999999999999"', region="us-east-2"),
        [(6, "services[0].accountId")], "999999999999 is not the account of any environment"),
    "unquoted account": (
        "services:\n" + service(environment=None, accountId=QA, region="us-east-2"),
        [(6, "services[0].accountId")], "which YAML reads as an int; quote it"),
    "account without region": (
        "services:\n" + service(environment=None, accountId=f'"{PROD}"'),
        [(2, "services[0].region")], "required with accountId: one of us-east-2, eu-west-1"),
    "region not in environment": (
        "services:\n" + service(region="eu-west-1"), [(7, "services[0].region")],
        "'eu-west-1' is not a region of environment 'qa' (us-east-2)"),
    "region not of the account": (
        "services:\n" + service(environment=None, accountId=f'"{QA}"', region="eu-west-1"),
        [(7, "services[0].region")], f"not a region of account {QA}"),
    "foreign registry": (
        "services:\n" + service(image='"222222222222.dkr.ecr.us-east-2.amazonaws.com/api:1"'),
        [(5, "services[0].image")], "222222222222 is not the tools registry 111111111111"),
    "not ECR (Docker Hub)": (
        "services:\n" + service(image="nginx:1.27"), [(5, "services[0].image")], "not an ECR image URI"),
    "tag and digest": (
        "services:\n" + service(image=f'"{TOOLS}.dkr.ecr.us-east-2.amazonaws.com/api:1@{DIGEST}"'),
        [(5, "services[0].image")], "gives both tag '1' and a digest"),
    "malformed digest": (
        "services:\n" + service(image=f'"{TOOLS}.dkr.ecr.us-east-2.amazonaws.com/api@sha256:ABC"'),
        [(5, "services[0].image")], "digest must be sha256: and 64 lower-case hex digits"),
    "malformed tag": (
        "services:\n" + service(image=f'"{TOOLS}.dkr.ecr.us-east-2.amazonaws.com/api:-x"'),
        [(5, "services[0].image")], "tag must be"),
    "neither tag nor digest": (
        "services:\n" + service(image=f'"{TOOLS}.dkr.ecr.us-east-2.amazonaws.com/api"'),
        [(5, "services[0].image")], "no implicit 'latest'"),
    "wrong partition domain": (
        "services:\n" + service(image=f'"{TOOLS}.dkr.ecr.us-east-2.amazonaws.com.cn/api:1"'),
        [(5, "services[0].image")], "not the aws partition's domain"),
    "bad ECS names": (
        "services:\n" + service(clusterName="arn:aws:ecs:us-east-2:1:cluster/core", serviceName='"my api"',
                                container='""'),
        [(3, "services[0].clusterName"), (4, "services[0].serviceName"), (7, "services[0].container")],
        "not an ARN"),
    "bad rule name": (
        "tasks:\n  - {service: t, cwRuleName: 'rule:x', image: \"" + IMAGE + "\", environment: qa}\n",
        [(2, "tasks[0].cwRuleName")], "an EventBridge rule name"),
    "yes/no read as booleans": (
        "services:\n" + service(environment="no"), [(6, "services[0].environment")],
        "'no', which YAML reads as a bool; quote it"),
    "duplicate service target": (
        "services:\n" + service(environment="prod") + service(environment="qa")
        + service(environment=None, accountId=f'"{PROD}"', region="eu-west-1"),
        [(12, "services[2]")], f"deploys the same ECS service (cluster 'core', service 'api') in account {PROD}, "
        "region eu-west-1 as services[0] (line 2)"),
    "duplicate rule target (default bus spelt out)": (
        "tasks:\n"
        "  - {service: a, cwRuleName: r, image: \"" + IMAGE + "\", environment: qa}\n"
        "  - {service: b, cwRuleName: r, image: \"" + IMAGE + "\", environment: qa, eventBus: default}\n"
        "  - {service: c, cwRuleName: r, image: \"" + IMAGE + "\", environment: qa, eventBus: other}\n",
        [(3, "tasks[1]")], "same scheduled task rule (event bus 'default', rule 'r')"),
    "duplicate YAML key": (
        "services:\n" + service() + "    clusterName: other\n", [(7, "services[0].clusterName")],
        "duplicate key (first at line 3)"),
    "duplicate top-level key": (
        "services:\n" + service() + "services:\n" + service(), [(7, "services")], "duplicate key (first at line 1)"),
    "merge key": (
        "services:\n" + service() + "    <<: {region: us-east-2}\n", [(7, "services[0]")], "merge keys"),
    "empty file": ("", [(1, "(root)")], "the file is empty"),
    "only comments": ("# nothing to release\n", [(1, "(root)")], "the file is empty"),
    "no entries": ("tasks:\nservices: []\n", [(1, "(root)")], "no entries"),
    "not a mapping": ("- service: a\n", [(1, "(root)")], "must be a mapping with tasks and/or services, got a list"),
    "section not a list": ("services:\n  service: a\n", [(2, "services")], "must be a list of entries"),
    "entry not a mapping": ("services:\n  - api\n", [(2, "services[0]")], "must be a mapping of keys"),
    "YAML syntax error": (
        "services:\n" + service() + "   region: us-east-2\n", [(7, "(yaml)")], "expected <block end>"),
    "unterminated quote": (
        "tasks:\n  - service: \"t\n    cwRuleName: r\n", [(4, "(yaml)")], "while scanning a quoted scalar at line 2"),
    "two YAML documents": ("services: []\n---\ntasks: []\n", [(2, "(yaml)")], "a second YAML document"),
    "control character": ("services:\n  - \x07\n", [(2, "(yaml)")], "special characters are not allowed"),
    "not UTF-8": (b"services:\n  - service: caf\xe9\n", [(2, "(file)")], "not UTF-8"),
}


@pytest.mark.parametrize("text,where,message", BROKEN.values(), ids=BROKEN.keys())
def test_broken_file_is_reported_at_its_line(text: str, where: list[tuple[int, str]], message: str) -> None:
    assert found(text) == where
    assert message in messages(text)


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    text = ("tasks:\n  - service: t\n    cwRuleName: r\n    image: nginx\n    environment: dev\n"
            "services:\n" + service(imgae="x", region="mars-1") + "extra: 1\n")
    assert found(text) == [(4, "tasks[0].image"), (5, "tasks[0].environment"), (12, "services[0].imgae"),
                           (13, "services[0].region"), (14, "extra")]


def test_convert_raises_with_every_problem() -> None:
    with pytest.raises(rf.ReleaseFileError) as caught:
        rf.convert(SEED, CTX, "deployment.yaml")
    assert [p.line for p in caught.value.problems] == [2, 4, 6, 9]
    assert str(caught.value).startswith("deployment.yaml:2: tasks[0]: needs environment")


# ------------------------------------------------------------------------------------------------ the context


def broken_context(path: str, value: object) -> dict:
    """CONTEXT with one value replaced (or removed when value is ...), path like 'environments.qa.regions'."""
    data = copy.deepcopy(CONTEXT)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize("path,value,problem", [
    ("extra", 1, "unknown key 'extra'"),
    ("homeRegion", ..., "missing key 'homeRegion'"),
    ("version", 2, "version: this code reads version 1, got 2"),
    ("partition", "aws-mars", "partition: expected one of"),
    ("registryId", 111111111111, "registryId: expected a 12-digit account id string"),
    ("environments", {}, "environments: expected a non-empty object"),
    ("environments.qa.accountId", TOOLS, "environments.qa.accountId: '111111111111' is the tools account"),
    ("environments.qa.regions", ["us-east-2", "us-east-2"], "environments.qa.regions: expected a non-empty list"),
    ("environments.qa.regions", ["cn-north-1"], "of partition aws"),
    ("environments.qa.deployRoleArn", ROLE.format(PROD), "environments.qa.deployRoleArn: expected an IAM role ARN"),
    ("environments.qa.stage", "x", "environments.qa: unknown key 'stage'"),
    ("environments.Bad_Name", CONTEXT["environments"]["qa"], "environments.Bad_Name: not an environment name"),
])
def test_context_is_strict(path: str, value: object, problem: str) -> None:
    with pytest.raises(rf.ContextError) as caught:
        rf.load_context(broken_context(path, value))
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_context_environments_sharing_an_account_share_its_role() -> None:
    data = broken_context("environments.staging", {"accountId": QA, "regions": ["eu-west-1"],
                                                   "deployRoleArn": ROLE.format(QA)})
    ctx = rf.load_context(data)
    assert ctx.account_regions(QA) == ("us-east-2", "eu-west-1")  # accountId entries may use either
    data["environments"]["staging"]["deployRoleArn"] = f"arn:aws:iam::{QA}:role/other"
    with pytest.raises(rf.ContextError, match="differs from environment 'qa'"):
        rf.load_context(data)


def test_other_partition_uses_its_domain() -> None:
    data = broken_context("partition", "aws-cn")
    data.update(homeRegion="cn-north-1")
    for env in data["environments"].values():
        env.update(regions=["cn-northwest-1"], deployRoleArn=env["deployRoleArn"].replace(":aws:", ":aws-cn:"))
    image = f'"{TOOLS}.dkr.ecr.cn-north-1.amazonaws.com.cn/api:1"'
    assert rf.validate("services:\n" + service(image=image), data) == []


# ------------------------------------------------------------------------------------------------ blue/green


BLUE_GREEN = {"application": "crossdeploy-prod", "deploymentGroups": {"api": "crossdeploy-api", "web": "web-dg"}}


def blue_green_context(**environments: dict) -> dict:
    """CONTEXT with prod blue/green (its CodeDeploy application and groups), plus any environments given."""
    data = broken_context("environments.prod.blueGreen", copy.deepcopy(BLUE_GREEN))
    data["environments"].update(environments)
    return data


def test_blue_green_context_key_is_optional_and_loaded() -> None:
    assert CTX.environments["prod"].blue_green is None  # a context without it (every older one) still loads
    ctx = rf.load_context(blue_green_context())
    assert ctx.environments["prod"].blue_green == rf.BlueGreen("crossdeploy-prod", BLUE_GREEN["deploymentGroups"])
    assert ctx.environments["qa"].blue_green is None


def assert_context_refused(data: dict, node: dict, keys: list[str], value: object, problem: str) -> None:
    """Set `keys` under `node` (a part of `data`) to `value` (``...``: delete it): the context is refused with
    `problem` among its problems."""
    *parents, last = keys
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    with pytest.raises(rf.ContextError) as caught:
        rf.load_context(data)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("path,value,problem", [
    ("environments.prod.blueGreen", "crossdeploy-prod", "environments.prod.blueGreen: expected an object"),
    ("environments.prod.blueGreen.extra", 1, "environments.prod.blueGreen: unknown key 'extra'"),
    ("environments.prod.blueGreen.application", ..., "environments.prod.blueGreen: missing key 'application'"),
    ("environments.prod.blueGreen.application", "my app", "environments.prod.blueGreen.application: expected a "
     "CodeDeploy application name"),
    ("environments.prod.blueGreen.application", "a" * 101, "environments.prod.blueGreen.application"),
    ("environments.prod.blueGreen.deploymentGroups", ["api"], "environments.prod.blueGreen.deploymentGroups: "
     "expected an object"),
    ("environments.prod.blueGreen.deploymentGroups.api", None, "environments.prod.blueGreen.deploymentGroups.api: "
     "expected a CodeDeploy deployment group name"),
    ("environments.prod.blueGreen.deploymentGroups.my/api", "g", "'my/api' is not an ECS service name"),
])
def test_blue_green_context_is_strict(path: str, value: object, problem: str) -> None:
    data = blue_green_context()
    keys = path.split(".", 4) if "deploymentGroups." in path else path.split(".")
    assert_context_refused(data, data, keys, value, problem)


def test_blue_green_services_convert_with_their_deployment_group() -> None:
    text = "services:\n" + service(environment="prod") + service(environment="qa") + service(
        serviceName="web", environment=None, accountId=f'"{PROD}"', region="eu-west-1")
    manifest = rf.convert(text, blue_green_context())
    deployed = {"application": "crossdeploy-prod", "deploymentGroup": "crossdeploy-api"}
    assert [(s["line"], s["region"], s.get("blueGreen")) for s in manifest["services"]] == [
        (2, "us-east-2", deployed), (2, "eu-west-1", deployed),
        (7, "us-east-2", None),  # qa is rolling: its item has no blueGreen key at all, as before
        (12, "eu-west-1", {"application": "crossdeploy-prod", "deploymentGroup": "web-dg"})]
    assert "blueGreen" not in manifest["services"][2]
    # A rolling context converts the same file exactly as it always did.
    assert all("blueGreen" not in s for s in rf.convert(text, CONTEXT)["services"])


def test_a_service_without_deployment_group_in_a_blue_green_environment_is_refused_at_its_line() -> None:
    text = ("services:\n" + service(serviceName="worker", environment="prod") + service(environment="qa")
            + service(serviceName="cron", environment=None, accountId=f'"{PROD}"', region="us-east-2"))
    problems = rf.validate(text, blue_green_context())
    assert [(p.line, p.path) for p in problems] == [(4, "services[0].serviceName"), (14, "services[2].serviceName")]
    assert str(problems[0]) == (
        "deployment.yaml:4: services[0].serviceName: service 'worker' has no CodeDeploy deployment group in account "
        f"{PROD}, region us-east-2: a blue/green environment deploys only the services it has a deployment group "
        "for: api, web in environment 'prod' (CodeDeploy application 'crossdeploy-prod')")
    assert "service 'cron' has no CodeDeploy deployment group" in str(problems[1])
    with pytest.raises(rf.ReleaseFileError):
        rf.convert(text, blue_green_context())
    # The same file against the rolling context: nothing to refuse.
    assert rf.validate(text, CTX) == []


def test_account_entries_in_an_account_shared_by_rolling_and_blue_green_environments() -> None:
    # staging (rolling) shares prod's account and region: an accountId entry naming a service prod has no group for
    # may be one of staging's, so it stays rolling (prepare then checks the service's deployment controller).
    staging = {"accountId": PROD, "regions": ["us-east-2"], "deployRoleArn": ROLE.format(PROD)}
    other_bg = {**staging, "blueGreen": {"application": "crossdeploy-staging",
                                         "deploymentGroups": {"api": "staging-api"}}}
    text = "services:\n" + service(serviceName="cron", environment=None, accountId=f'"{PROD}"', region="us-east-2")
    manifest = rf.convert(text, blue_green_context(staging=staging))
    assert "blueGreen" not in manifest["services"][0]
    # Two blue/green environments with the same service in one account and region: ambiguous, refused.
    text = "services:\n" + service(environment=None, accountId=f'"{PROD}"', region="us-east-2")
    [problem] = rf.validate(text, blue_green_context(staging=other_bg))
    assert (problem.line, problem.path) == (4, "services[0].serviceName")
    assert "blue/green in environments prod, staging with different CodeDeploy deployment groups" in problem.message
    # ... unless the entry names its environment.
    text = "services:\n" + service(environment="staging")
    assert rf.convert(text, blue_green_context(staging=other_bg))["services"][0]["blueGreen"] == {
        "application": "crossdeploy-staging", "deploymentGroup": "staging-api"}


# ------------------------------------------------------------------------------------------------ smoke-test hooks


HOOK = "crossdeploy-prod-smoke-test"  # naming.smoke_hook_function_name: one name in every region of prod


def hooked_context(**environments: dict) -> dict:
    """blue_green_context with prod's api smoke-tested by prod's hook (web has no smoke test)."""
    data = blue_green_context(**environments)
    data["environments"]["prod"]["blueGreen"]["smokeTestHooks"] = {"api": HOOK}
    return data


def test_smoke_test_hooks_are_optional_in_the_context_and_loaded() -> None:
    assert rf.load_context(blue_green_context()).environments["prod"].blue_green.smoke_test_hooks == {}
    ctx = rf.load_context(hooked_context())
    assert ctx.environments["prod"].blue_green == rf.BlueGreen("crossdeploy-prod", BLUE_GREEN["deploymentGroups"],
                                                               {"api": HOOK})
    empty = blue_green_context()
    empty["environments"]["prod"]["blueGreen"]["smokeTestHooks"] = {}  # no service smoke-tested: same as absent
    assert rf.load_context(empty).environments["prod"].blue_green.smoke_test_hooks == {}


@pytest.mark.parametrize("path,value,problem", [
    ("smokeTestHooks", ["api"], "environments.prod.blueGreen.smokeTestHooks: expected an object of Lambda function "
     "names by ECS service name, got ['api']"),
    ("smokeTestHooks", HOOK, "environments.prod.blueGreen.smokeTestHooks: expected an object"),
    ("smokeTestHooks.worker", HOOK, "environments.prod.blueGreen.smokeTestHooks.worker: service 'worker' has no "
     "deployment group in environments.prod.blueGreen.deploymentGroups (api, web)"),
    ("smokeTestHooks.api", f"arn:aws:lambda:us-east-2:{PROD}:function:{HOOK}",
     "environments.prod.blueGreen.smokeTestHooks.api: expected a Lambda function name (letters, digits, '-', '_', "
     "at most 64 characters; not an ARN), got 'arn:aws:lambda:"),
    ("smokeTestHooks.api", f"{HOOK}:live", "environments.prod.blueGreen.smokeTestHooks.api: expected a Lambda "
     "function name"),
    ("smokeTestHooks.api", "h" * 65, "environments.prod.blueGreen.smokeTestHooks.api: expected a Lambda function"),
    ("smokeTestHooks.api", None, "environments.prod.blueGreen.smokeTestHooks.api: expected a Lambda function name"),
    ("smokeTestHooks.api", "", "environments.prod.blueGreen.smokeTestHooks.api: expected a Lambda function name"),
    ("smokeTestHook", HOOK, "environments.prod.blueGreen: unknown key 'smokeTestHook'"),
])
def test_smoke_test_hooks_in_the_context_are_strict(path: str, value: object, problem: str) -> None:
    data = hooked_context()
    assert_context_refused(data, data["environments"]["prod"]["blueGreen"], path.split("."), value, problem)


def test_blue_green_services_convert_with_their_smoke_test_hook() -> None:
    text = "services:\n" + service(environment="prod") + service(environment="qa") + service(
        serviceName="web", environment=None, accountId=f'"{PROD}"', region="eu-west-1")
    manifest = rf.convert(text, hooked_context())
    hooked = {"application": "crossdeploy-prod", "deploymentGroup": "crossdeploy-api", "smokeTestHook": HOOK}
    assert [(s["line"], s["region"], s.get("blueGreen")) for s in manifest["services"]] == [
        (2, "us-east-2", hooked), (2, "eu-west-1", hooked),  # the same function name in each of prod's regions
        (7, "us-east-2", None),  # rolling: no blueGreen, no hook (the deploy engine smoke-tests it)
        # web has no smoke test: its blueGreen is exactly what it was before hooks existed
        (12, "eu-west-1", {"application": "crossdeploy-prod", "deploymentGroup": "web-dg"})]
    # Without smokeTestHooks in the context, the same file converts with no hook anywhere.
    assert all("smokeTestHook" not in s.get("blueGreen", {})
               for s in rf.convert(text, blue_green_context())["services"])


def test_account_entries_are_ambiguous_when_environments_disagree_on_the_hook() -> None:
    # staging shares prod's account, region, application and group name, but smoke-tests api with another function.
    staging = {"accountId": PROD, "regions": ["us-east-2"], "deployRoleArn": ROLE.format(PROD),
               "blueGreen": {"application": "crossdeploy-prod", "deploymentGroups": {"api": "crossdeploy-api"},
                             "smokeTestHooks": {"api": "crossdeploy-staging-smoke-test"}}}
    text = "services:\n" + service(environment=None, accountId=f'"{PROD}"', region="us-east-2")
    [problem] = rf.validate(text, hooked_context(staging=staging))
    assert (problem.line, problem.path) == (4, "services[0].serviceName")
    assert "with different CodeDeploy deployment groups or smoke-test hooks" in problem.message
    # The same hook in both: one way to deploy it, so no ambiguity.
    staging["blueGreen"]["smokeTestHooks"] = {"api": HOOK}
    [item] = rf.convert(text, hooked_context(staging=staging))["services"]
    assert item["blueGreen"]["smokeTestHook"] == HOOK


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "release-context.json").write_text(json.dumps(CONTEXT), encoding="utf-8")
    (tmp_path / "good.yaml").write_text(extended_seed(), encoding="utf-8")
    (tmp_path / "deployment.yaml").write_text(SEED, encoding="utf-8")
    return tmp_path


def test_cli_validate_valid_file(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = rf.main(["validate", str(files / "good.yaml"), "--context", str(files / "release-context.json")])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out == f"{files / 'good.yaml'}: valid (2 service target(s), 1 task target(s))\n"


def test_cli_validate_prints_every_problem_and_exits_1(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = rf.main(["validate", str(files / "deployment.yaml"), "--context-json", json.dumps(CONTEXT)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert [line.split(": ", 1)[0] for line in lines[:4]] == [f"{files / 'deployment.yaml'}:{n}" for n in (2, 4, 6, 9)]
    assert lines[4] == f"{files / 'deployment.yaml'}: 4 problem(s); not deployable"


def test_cli_convert_writes_the_manifest(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = files / "out" / "release.json"
    code = rf.main(["convert", str(files / "good.yaml"), "--context", str(files / "release-context.json"),
                    "--out", str(out_file)])
    assert code == 0, capsys.readouterr()
    assert json.loads(out_file.read_text()) == rf.convert(extended_seed(), CONTEXT, str(files / "good.yaml"))
    assert [p.name for p in out_file.parent.iterdir()] == ["release.json"]  # no temporary file left behind


def test_cli_convert_writes_nothing_when_invalid(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fresh, stale = files / "fresh.json", files / "stale.json"
    stale.write_text("previous build's manifest")
    for out_file in (fresh, stale):
        code = rf.main(["convert", str(files / "deployment.yaml"), "--context", str(files / "release-context.json"),
                        "--out", str(out_file)])
        assert code == 1
        assert "4 problem(s); nothing written" in capsys.readouterr().err
    assert not fresh.exists()
    assert stale.read_text() == "previous build's manifest"


@pytest.mark.parametrize("args,message", [
    (["--context-json", "{not json"], "--context-json: not valid JSON"),
    (["--context-json", json.dumps({**CONTEXT, "version": 9})], "--context-json: version: this code reads"),
    (["--context", "missing.json"], "missing.json: cannot read: No such file or directory"),
])
def test_cli_bad_context_exits_2(files: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                 message: str) -> None:
    assert rf.main(["validate", str(files / "good.yaml"), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_usage_and_unreadable_file_exit_2(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rf.main(["validate", str(files / "good.yaml")]) == 2  # no context
    assert rf.main(["convert", str(files / "good.yaml"), "--context-json", "{}"]) == 2  # no --out
    assert rf.main(["validate", str(files / "nope.yaml"), "--context-json", json.dumps(CONTEXT)]) == 2
    assert "nope.yaml: cannot read" in capsys.readouterr().err


def test_module_entry_point(files: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "handlers.release_file", "validate", "deployment.yaml",
                          "--context", "release-context.json"],
                         cwd=files, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[0] == ("deployment.yaml:2: tasks[0]: needs environment (one of: qa, prod), "
                                          "or accountId and region")
    assert "Traceback" not in run.stderr


def test_needs_only_stdlib_and_pyyaml() -> None:
    """CodeBuild vendors PyYAML and nothing else for this module."""
    tree = ast.parse((ROOT / "handlers" / "release_file.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - set(sys.stdlib_module_names) == {"yaml", "handlers"}
    # The one first-party module it uses is the release ceiling, shipped next to it and stdlib-only itself.
    first_party = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.module or "").startswith("handlers")}
    assert first_party == {"handlers.release_limits"}
    limits = ast.parse((ROOT / "handlers" / "release_limits.py").read_text())
    assert {n.module.split(".")[0] for n in ast.walk(limits) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name.split(".")[0] for n in ast.walk(limits) if isinstance(n, ast.Import) for a in n.names} <= set(
        sys.stdlib_module_names)
