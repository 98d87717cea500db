"""Issue 10's config: smoke tests, deployment windows and alarm bakes. Every bad value is named with its key path
and value, all at once, before any resource; CodePipeline's own cron rules and Python's IANA database are the
judges, not a looser copy."""

from __future__ import annotations

import pytest
from conftest import QA, config
from test_config import env, problems_of

from components.config import cron_problems, parse


def svc(**kw: object) -> dict:
    return {"name": "orders", **kw}


def parsed(cfg: dict):
    raw = {k.split(":", 1)[1]: v for k, v in cfg.items() if k.startswith("crossdeploy:")}
    return parse(raw, project="crossdeploy", stack="t", aws_region=cfg.get("aws:region"))


BROKEN = {
    "smoke path without slash": (
        {"crossdeploy:services": [svc(smokeTest={"path": "orders/health"})]}, "services[0].smokeTest.path",
        "'orders/health'"),
    "smoke status 600": (
        {"crossdeploy:services": [svc(smokeTest={"path": "/orders/health", "expectStatus": "200-600"})]},
        "services[0].smokeTest.expectStatus", "600"),
    "smoke status words": (
        {"crossdeploy:services": [svc(smokeTest={"path": "/orders/health", "expectStatus": "2xx"})]},
        "services[0].smokeTest.expectStatus", "2xx"),
    "smoke attempts 0": (
        {"crossdeploy:services": [svc(smokeTest={"path": "/orders/health", "attempts": 0})]},
        "services[0].smokeTest.attempts", "0"),
    "smoke timeout too long": (
        {"crossdeploy:services": [svc(smokeTest={"path": "/orders/health", "timeoutSeconds": 61})]},
        "services[0].smokeTest.timeoutSeconds", "61"),
    "smoke path not routed": (
        {"crossdeploy:services": [svc(smokeTest={"path": "/health"})]}, "services[0].smokeTest.path",
        "not routed to the service"),
    "smoke with wildcard hosts only": (
        {"crossdeploy:services": [svc(routing={"hosts": ["*.example.org"]}, smokeTest={"path": "/"})]},
        "services[0].smokeTest", "one exact host"),
    "smoke on an existing service": (
        {"crossdeploy:services": [svc(existing=True, executionRoleName="ecsTaskExecutionRole",
                                      smokeTest={"path": "/orders"})]},
        "services[0].smokeTest", "existing: true"),
    "cron with five fields": (
        {"crossdeploy:environments": [env(deploymentWindow={"cron": "0 9-17 * * MON-FRI"})]},
        "environments[0].deploymentWindow.cron", "5 fields"),
    "cron with seconds": (
        {"crossdeploy:environments": [env(deploymentWindow={"cron": "0 * 9-17 ? * MON-FRI *"})]},
        "environments[0].deploymentWindow.cron", "seconds must be '*'"),
    "cron hour 24": (
        {"crossdeploy:environments": [env(deploymentWindow={"cron": "* * 9-24 ? * MON-FRI"})]},
        "environments[0].deploymentWindow.cron", "hours '9-24'"),
    "cron with both day fields": (
        {"crossdeploy:environments": [env(deploymentWindow={"cron": "* * 9-17 * * MON-FRI"})]},
        "environments[0].deploymentWindow.cron", "exactly one of day-of-month and day-of-week"),
    "cron bad weekday": (
        {"crossdeploy:environments": [env(deploymentWindow={"cron": "* * 9-17 ? * MON-FUN"})]},
        "environments[0].deploymentWindow.cron", "day-of-week 'MON-FUN'"),
    "unknown time zone": (
        {"crossdeploy:environments": [env(deploymentWindow={"cron": "* * 9-17 ? * MON-FRI",
                                                            "timeZone": "Mars/Olympus"})]},
        "environments[0].deploymentWindow.timeZone", "'Mars/Olympus'"),
    "window without cron": (
        {"crossdeploy:environments": [env(deploymentWindow={"timeZone": "UTC"})]},
        "environments[0].deploymentWindow.cron", "required"),
    "push smoke test too long for one invocation": (
        {"crossdeploy:services": [svc(delivery="push", smokeTest={"path": "/orders/health", "attempts": 10,
                                                                  "timeoutSeconds": 60})]},
        "services[0].smokeTest", "up to 645 s"),
    "negative bake": (
        {"crossdeploy:environments": [env(bakeMinutes=-1)]}, "environments[0].bakeMinutes", "-1"),
    "bake beyond a day": (
        {"crossdeploy:environments": [env(bakeMinutes=1441)]}, "environments[0].bakeMinutes", "1441"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_gate_names_its_path_and_value(case: str) -> None:
    overrides, path, detail = BROKEN[case]
    problems = problems_of(config(**overrides))
    assert any(path in p and detail in p for p in problems), problems


def test_all_gate_problems_are_reported_at_once() -> None:
    problems = problems_of(config(**{
        "crossdeploy:environments": [env(deploymentWindow={"cron": "* * 25 ? * *", "timeZone": "Nowhere"},
                                         bakeMinutes=5000)],
        "crossdeploy:services": [svc(smokeTest={"path": "x", "expectStatus": "99"})],
    }))
    for path in ("deploymentWindow.cron", "deploymentWindow.timeZone", "bakeMinutes", "smokeTest.path",
                 "smokeTest.expectStatus"):
        assert any(path in p for p in problems), (path, problems)


@pytest.mark.parametrize("cron", [
    "* * 9-17 ? * MON-FRI *",      # the rule reference's own shape
    "* * 9-16 ? * MON-THU",        # year optional
    "* 0/15 8-18 ? * 2-6 2026-2030",
    "* * * L * ?",
    "* * 22-23 ? * 6#3",
    "* 30 6 15W * ?",
    "* * 1,3,5 ? JAN-MAR,DEC MON",
])
def test_codepipeline_crons_are_accepted(cron: str) -> None:
    assert cron_problems(cron) == []


def test_gate_defaults() -> None:
    cfg = parsed(config(**{"crossdeploy:environments": [
        env(), env(name="prod", accountId="777788889999", requireApproval=True),
        env(name="stage", accountId="777788889999", regions=["eu-west-1"], requireApproval=True, bakeMinutes=0,
            deploymentWindow={"cron": "* * 9-16 ? * MON-THU *"})],
        "crossdeploy:services": [svc(smokeTest={"path": "/orders/health"})]}))
    qa, prod, stage = cfg.environments
    assert (qa.bake, prod.bake, stage.bake) == (0, 10, 0)
    assert qa.deployment_window is None and stage.deployment_window.time_zone == "UTC"
    assert cfg.services[0].smoke_spec() == {"path": "/orders/health", "expectStatus": "200-399",
                                            "timeoutSeconds": 10, "attempts": 3}
    assert cfg.baked_environments(cfg.services[0]) == (prod,)


def test_smoke_test_sends_the_first_exact_host() -> None:
    cfg = parsed(config(**{"crossdeploy:environments": [env()], "crossdeploy:services": [
        svc(routing={"hosts": ["*.shop.example.org", "shop.example.org"]}, smokeTest={"path": "/health"})]}))
    assert cfg.services[0].smoke_spec()["host"] == "shop.example.org"


def test_existing_services_are_never_baked() -> None:
    cfg = parsed(config(**{"crossdeploy:environments": [env(bakeMinutes=5, accountId=QA)], "crossdeploy:services": [
        svc(existing=True, executionRoleName="ecsTaskExecutionRole")]}))
    assert cfg.baked_environments(cfg.services[0]) == ()
