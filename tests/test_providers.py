"""Providers: one per (account, region) in use, pinned to their account; nothing on the default provider."""

from __future__ import annotations

import json

from conftest import PROD, QA, TOOLS

from offline.mocks import PROVIDER_TYPE


def providers(run) -> dict[tuple[str, str], dict]:
    found = {}
    for r in run.of_type(PROVIDER_TYPE):
        accounts = json.loads(r.inputs["allowedAccountIds"])
        assert len(accounts) == 1, f"{r.name} allows {accounts}"
        key = (accounts[0], r.inputs["region"])
        assert key not in found, f"two providers for {key}"
        found[key] = r.inputs
    return found


def test_one_provider_per_account_and_region_in_use(base_run) -> None:
    assert set(providers(base_run)) == {
        (TOOLS, "us-east-2"), (TOOLS, "eu-west-1"),
        (QA, "us-east-2"),
        (PROD, "us-east-2"), (PROD, "eu-west-1"),
    }


def test_workload_providers_assume_the_provision_role_with_a_named_session(base_run) -> None:
    for (account, _region), inputs in providers(base_run).items():
        if account == TOOLS:
            assert "assumeRoles" not in inputs, "the tools account uses the operator's own credentials"
            continue
        roles = json.loads(inputs["assumeRoles"])
        # camelCase keys: a snake_case dict would be JSON-encoded as is and the provider would ignore role_arn.
        assert roles == [{"roleArn": f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole",
                          "sessionName": "crossdeploy-test"}]


def test_custom_provision_role_is_used() -> None:
    from conftest import config

    from offline.mocks import run_program

    cfg = config(**{"crossdeploy:environments": [
        {"name": "qa", "accountId": QA, "regions": ["us-east-2"], "provisionRoleName": "PlatformProvisioner"}]})
    run = run_program(cfg, stack="custom")
    roles = [json.loads(r.inputs["assumeRoles"]) for r in run.of_type(PROVIDER_TYPE) if "assumeRoles" in r.inputs]
    assert roles == [[{"roleArn": f"arn:aws:iam::{QA}:role/PlatformProvisioner", "sessionName": "crossdeploy-custom"}]]


def test_every_resource_names_an_explicit_provider(base_run, prod_run) -> None:
    for run in (base_run, prod_run):
        orphans = [(r.type, r.name) for r in run.custom() if r.provider is None or r.account is None]
        assert orphans == []


def test_resources_land_in_the_account_their_arns_claim(prod_run) -> None:
    for r in prod_run.custom():
        if "arn" in r.inputs:
            continue  # an input `arn` names another resource (an event target's destination), not this one
        arn = r.outputs.get("arn")
        if isinstance(arn, str) and arn.startswith("arn:aws:") and arn.split(":")[4]:
            assert arn.split(":")[4] == r.account, (r.type, r.name, arn)


def test_every_child_has_a_component_parent(prod_run) -> None:
    components = {r.name for r in prod_run.resources if not r.custom}
    for r in prod_run.resources:
        if r.custom:
            assert r.parent and "crossdeploy:" in r.parent, (r.type, r.name, r.parent)
    assert {"providers", "artifacts", "registry", "notifications"} <= components


def test_component_type_tokens_follow_house_style(prod_run) -> None:
    for r in prod_run.resources:
        if not r.custom:
            namespace, module, name = r.type.split(":")
            assert namespace == "crossdeploy" and module.islower() and name[0].isupper(), r.type
