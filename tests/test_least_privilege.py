"""Least privilege across every IAM document the program sends to AWS, and the agreement of the four policies a
cross-account deploy action depends on (trust, deploy role, bucket, key): a disagreement is exactly an S3 or KMS
403 in a workload account."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import (
    PROD,
    ROOT,
    bucket_policy_for,
    by_output,
    config,
    deploy_actions,
    key_policy_for,
    pipelines,
    role_policy,
)
from iam import allows, as_list, statements

import components.deploy_role
import components.naming
from components.config import parse
from components.deploy_role import (
    DeployRoleArgs,
    codedeploy_targets,
    deploy_role_policy,
    deploy_targets,
    passable_roles,
)
from components.naming import deploy_role_name, iam_path, pipeline_role_pattern
from components.policies import INLINE_POLICY_LIMIT, check_inline_policy_size, inline_policy_size
from offline.mocks import ProgramRun, run_program, stack_config

# The actions allowed on Resource "*" (those with no resource type in the Service Authorization Reference) are listed
# once, in the policy pack that enforces them on every preview. The Pulumi CLI runs the pack from its own directory,
# its modules importing as top-level ones: that directory goes on the path to import the very same module.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))
from crossdeploy_standards import UNSCOPABLE

ENGINE_HANDLER = "handlers.pipeline_deploy.handler"
POLICY_FIELDS = {"policy", "assumeRolePolicy"}


def documents(run: ProgramRun) -> list[tuple[str, dict]]:
    docs = []
    for r in run.custom():
        for field in POLICY_FIELDS & set(r.inputs):
            value = r.inputs[field]
            doc = json.loads(value) if isinstance(value, str) else value
            if isinstance(doc, dict) and "Statement" in doc:
                docs.append((f"{r.type} {r.name}.{field}", doc))
    return docs


@pytest.fixture(scope="module", params=["base", "prod"])
def run(request, base_run, prod_run) -> ProgramRun:
    return base_run if request.param == "base" else prod_run


def test_every_iam_document_is_found(run) -> None:
    kinds = {name.split()[0] for name, _ in documents(run)}
    assert {"aws:iam/role:Role", "aws:iam/rolePolicy:RolePolicy", "aws:kms/key:Key", "aws:s3/bucketPolicy:BucketPolicy",
            "aws:ecr/repositoryPolicy:RepositoryPolicy", "aws:sns/topicPolicy:TopicPolicy"} <= kinds


def test_no_wildcard_actions_are_allowed(run) -> None:
    for name, doc in documents(run):
        for stmt in as_list(doc["Statement"]):
            if stmt["Effect"] != "Allow":
                continue
            for action in as_list(stmt["Action"]):
                assert action != "*" and not action.endswith(":*"), f"{name}: {action}"


def test_resource_star_only_for_actions_aws_cannot_scope(run) -> None:
    for name, doc in documents(run):
        if not name.startswith("aws:iam/rolePolicy"):
            continue  # resource policies: "*" there means "this key/topic", not every resource
        for stmt in as_list(doc["Statement"]):
            if stmt["Effect"] == "Allow" and "*" in as_list(stmt["Resource"]):
                assert set(as_list(stmt["Action"])) <= UNSCOPABLE, f"{name}: {stmt}"


def test_pass_role_always_names_the_service_it_passes_to(run) -> None:
    found = 0
    for name, doc in documents(run):
        for stmt in as_list(doc["Statement"]):
            if stmt["Effect"] == "Allow" and any(a.lower() == "iam:passrole" for a in as_list(stmt["Action"])):
                found += 1
                assert stmt["Condition"]["StringEquals"]["iam:PassedToService"], name
                for resource in as_list(stmt["Resource"]):
                    # Named roles, or the one path holding the roles the stack creates for its services (listing
                    # two roles per service would overflow IAM's 10,240-character inline policy limit).
                    assert "*" not in resource or re.fullmatch(r"arn:aws:iam::\d{12}:role/crossdeploy/[^/*]+/"
                                                               r"workload/\*", resource), f"{name}: {resource}"
    assert found, "the deploy roles pass task and execution roles"


def test_resource_policies_never_allow_everyone(run) -> None:
    for name, doc in documents(run):
        for stmt in as_list(doc["Statement"]):
            if stmt["Effect"] == "Allow" and "Principal" in stmt:
                assert stmt["Principal"] not in ("*", {"AWS": "*"}), name


def test_service_roles_trust_only_their_service_in_this_account(run) -> None:
    tools = {r.account for r in pipelines(run)}.pop()
    for role in run.of_type("aws:iam/role:Role"):
        for stmt in statements(role.inputs["assumeRolePolicy"]):
            principal = stmt["Principal"]
            if "Service" in principal:
                # The service acts for this role's own account (confused-deputy guard); ECS task roles also
                # narrow the source to this account's ECS resources.
                assert stmt["Condition"]["StringEquals"] == {"aws:SourceAccount": role.account}, role.name
                assert set(stmt["Condition"]) <= {"StringEquals", "ArnLike"}, role.name
                for pattern in stmt["Condition"].get("ArnLike", {}).values():
                    assert pattern.split(":")[4] == role.account, role.name
            else:
                assert principal == {"AWS": f"arn:aws:iam::{tools}:root"} and "ArnLike" in stmt["Condition"]


def check_agreement(run: ProgramRun) -> list[str]:
    """Every way a deploy action could be refused, as messages; empty when all four policies agree."""
    problems: list[str] = []
    for pipeline in pipelines(run):
        pipeline_role = by_output(run, "arn", pipeline.inputs["roleArn"])
        pipeline_policy = role_policy(run, pipeline_role)
        stores = {s.get("region", pipeline.region): s for s in pipeline.inputs["artifactStores"]}
        for stage, action in deploy_actions(pipeline):
            where = f"{pipeline.outputs['name']}/{stage}/{action['name']}"
            region, deploy_arn = action["region"], action["roleArn"]
            deploy_roles = [r for r in run.of_type("aws:iam/role:Role") if r.outputs["arn"] == deploy_arn]
            if len(deploy_roles) != 1:
                problems.append(f"{where}: role_arn {deploy_arn} is not a role the program creates")
                continue
            deploy_role = deploy_roles[0]
            if not allows(pipeline_policy, "sts:AssumeRole", deploy_arn):
                problems.append(f"{where}: pipeline role may not assume {deploy_arn}")
            if not allows(deploy_role.inputs["assumeRolePolicy"], "sts:AssumeRole",
                          principal_arn=pipeline_role.outputs["arn"]):
                problems.append(f"{where}: {deploy_arn} does not trust {pipeline_role.outputs['arn']}")
            store = stores[region]
            bucket, key_arn = store["location"], store["encryptionKey"]["id"]
            obj = f"arn:aws:s3:::{bucket}/{pipeline.outputs['name']}/ImageDefinitions/abc.zip"
            deploy_policy = role_policy(run, deploy_role)
            for label, doc, action_name, resource, principal in (
                ("deploy role policy", deploy_policy, "s3:GetObject", obj, None),
                ("bucket policy", bucket_policy_for(run, bucket), "s3:GetObject", obj, deploy_arn),
                ("deploy role policy", deploy_policy, "kms:Decrypt", key_arn, None),
                ("key policy", key_policy_for(run, key_arn), "kms:Decrypt", None, deploy_arn),
                ("pipeline role policy", pipeline_policy, "s3:PutObject", obj, None),
                ("pipeline role policy", pipeline_policy, "kms:GenerateDataKey", key_arn, None),
            ):
                if not allows(doc, action_name, resource, principal_arn=principal):
                    problems.append(f"{where}: {label} denies {action_name} on {resource or key_arn}")
            if action["provider"] == "CodeDeployToECS":
                problems.extend(_codedeploy_problems(run, where, action, deploy_role, deploy_policy))
                continue
            cluster, service = action["configuration"]["ClusterName"], action["configuration"]["ServiceName"]
            service_arn = f"arn:aws:ecs:{region}:{deploy_role.account}:service/{cluster}/{service}"
            for ecs_action in ("ecs:DescribeServices", "ecs:UpdateService", "ecs:RegisterTaskDefinition"):
                if not allows(deploy_policy, ecs_action, service_arn):
                    problems.append(f"{where}: deploy role may not {ecs_action} {service_arn}")
    return problems + check_engine_agreement(run)


def engine_actions(pipeline, *, bake: bool = False) -> list[tuple[str, dict]]:
    """The engine's invoke actions of a pipeline: its deployments, or (``bake``) its alarm bakes."""
    return [(stage["name"], action) for stage in pipeline.inputs["stages"] for action in stage["actions"]
            if (action["category"], action["provider"]) == ("Invoke", "Lambda")
            and ("bake" in json.loads(action["configuration"]["UserParameters"])) == bake]


def check_bake_agreement(run: ProgramRun) -> list[str]:
    """Every way a bake could be refused: the pipeline role invoking the engine function, the function's role
    assuming the deploy role named in the action (and that role trusting it), and the deploy role reading each alarm
    the action names, in each region."""
    problems: list[str] = []
    functions = {f.outputs["name"]: f for f in run.of_type("aws:lambda/function:Function")}
    for pipeline in pipelines(run):
        for stage, action in engine_actions(pipeline, bake=True):
            where = f"{pipeline.outputs['name']}/{stage}/{action['name']}"
            bake = json.loads(action["configuration"]["UserParameters"])["bake"]
            function = functions[action["configuration"]["FunctionName"]]
            pipeline_policy = role_policy(run, by_output(run, "arn", pipeline.inputs["roleArn"]))
            if not allows(pipeline_policy, "lambda:InvokeFunction", function.outputs["arn"]):
                problems.append(f"{where}: pipeline role may not invoke {function.outputs['arn']}")
            engine_role = by_output(run, "arn", function.inputs["role"])
            roles = [r for r in run.of_type("aws:iam/role:Role") if r.outputs["arn"] == bake["roleArn"]]
            if len(roles) != 1:
                problems.append(f"{where}: {bake['roleArn']} is not a role the program creates")
                continue
            if not allows(role_policy(run, engine_role), "sts:AssumeRole", bake["roleArn"]):
                problems.append(f"{where}: the engine role may not assume {bake['roleArn']}")
            if not allows(roles[0].inputs["assumeRolePolicy"], "sts:AssumeRole",
                          principal_arn=engine_role.outputs["arn"]):
                problems.append(f"{where}: {bake['roleArn']} does not trust the engine role")
            deploy_policy = role_policy(run, roles[0])
            for region in bake["regions"]:
                for alarm in bake["alarms"]:
                    arn = f"arn:aws:cloudwatch:{region}:{roles[0].account}:alarm:{alarm}"
                    if not allows(deploy_policy, "cloudwatch:DescribeAlarms", arn):
                        problems.append(f"{where}: deploy role may not read {arn}")
    return problems


def check_engine_agreement(run: ProgramRun) -> list[str]:
    """Every way a deploy engine action could be refused: the pipeline role invoking the function and reading the
    document, the function's role assuming each target's deploy role (its policy and the role's trust), and the
    deploy role making each call the engine makes for that target."""
    problems: list[str] = []
    functions = {f.outputs["name"]: f for f in run.of_type("aws:lambda/function:Function")}
    documents = {o.inputs["key"]: json.loads(o.inputs["source"].assets["deploy.json"].text)
                 for o in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
                 if "deploy.json" in getattr(o.inputs.get("source"), "assets", {})}
    for pipeline in pipelines(run):
        actions = engine_actions(pipeline)
        if not actions:
            continue
        pipeline_policy = role_policy(run, by_output(run, "arn", pipeline.inputs["roleArn"]))
        (source,) = [a for a in pipeline.inputs["stages"][0]["actions"] if a["name"] == "Config"]
        bucket, key = source["configuration"]["S3Bucket"], source["configuration"]["S3ObjectKey"]
        home_key = next(s for s in pipeline.inputs["artifactStores"] if s.get("region", pipeline.region) ==
                        pipeline.region)
        for api, resource in (("s3:GetObject", f"arn:aws:s3:::{bucket}/{key}"),
                              ("s3:GetObjectVersion", f"arn:aws:s3:::{bucket}/{key}"),
                              ("s3:GetBucketVersioning", f"arn:aws:s3:::{bucket}"),
                              ("kms:Decrypt", home_key["encryptionKey"]["id"])):
            if not allows(pipeline_policy, api, resource):
                problems.append(f"{pipeline.outputs['name']}/Source/Config: pipeline role may not {api} {resource}")
        document = documents[key]
        for stage, action in actions:
            where = f"{pipeline.outputs['name']}/{stage}/{action['name']}"
            function = functions.get(action["configuration"]["FunctionName"])
            if function is None or function.inputs["handler"] != ENGINE_HANDLER:
                problems.append(f"{where}: {action['configuration']['FunctionName']} is not the engine function")
                continue
            if not allows(pipeline_policy, "lambda:InvokeFunction", function.outputs["arn"]):
                problems.append(f"{where}: pipeline role may not invoke {function.outputs['arn']}")
            engine_role = by_output(run, "arn", function.inputs["role"])
            engine_policy = role_policy(run, engine_role)
            environment = json.loads(action["configuration"]["UserParameters"])["environment"]
            (env,) = [e for e in document["environments"] if e["name"] == environment]
            for target in env["targets"]:
                problems.extend(_engine_target_problems(run, where, engine_role, engine_policy, env, target))
    return problems


def _engine_target_problems(run: ProgramRun, where: str, engine_role, engine_policy: str, env: dict,
                            target: dict) -> list[str]:
    problems = []
    role_arn, region, account = target["roleArn"], target["region"], target["accountId"]
    where = f"{where}/{region}"
    roles = [r for r in run.of_type("aws:iam/role:Role") if r.outputs["arn"] == role_arn]
    if len(roles) != 1 or roles[0].account != account:
        return [f"{where}: {role_arn} is not a deploy role the program creates in {account}"]
    if not allows(engine_policy, "sts:AssumeRole", role_arn):
        problems.append(f"{where}: the engine role may not assume {role_arn}")
    if not allows(roles[0].inputs["assumeRolePolicy"], "sts:AssumeRole", principal_arn=engine_role.outputs["arn"]):
        problems.append(f"{where}: {role_arn} does not trust the engine role")
    deploy_policy = role_policy(run, roles[0])
    prefix = f"arn:aws:ecs:{region}:{account}"
    service_arn = f"{prefix}:service/{target['cluster']}/{target['service']}"
    deployment_arn = f"{prefix}:service-deployment/{target['cluster']}/{target['service']}/Kq8bUNx3m5VvWe0"
    calls = [("ecs:DescribeServices", service_arn), ("ecs:UpdateService", service_arn),
             ("ecs:ListServiceDeployments", service_arn), ("ecs:DescribeTaskDefinition", "*"),
             ("ecs:RegisterTaskDefinition", "*")]
    # IAM checks both the service and the service deployment for these two.
    calls += [(api, arn) for api in ("ecs:DescribeServiceDeployments", "ecs:StopServiceDeployment")
              for arn in (service_arn, deployment_arn)]
    for api, resource in calls:
        if not allows(deploy_policy, api, resource):
            problems.append(f"{where}: deploy role may not {api} {resource}")
    taskdef = target["taskDefinition"] or {}
    for key in ("executionRoleArn", "taskRoleArn"):
        if taskdef.get(key) and not allows(deploy_policy, "iam:PassRole", taskdef[key],
                                           context={"iam:PassedToService": "ecs-tasks.amazonaws.com"}):
            problems.append(f"{where}: deploy role may not pass {taskdef[key]}")
    if target.get("smokeTest"):
        for api in ("elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeLoadBalancers"):
            if not allows(deploy_policy, api, "*"):
                problems.append(f"{where}: deploy role may not {api} (the smoke test's address)")
    if env["strategy"] in ("blue-green", "canary", "linear"):
        infrastructure = f"arn:aws:iam::{account}:role/crossdeploy/{run_stack(run)}/infrastructure/" \
                         f"crossdeploy-{run_stack(run)}-ecs-infrastructure"
        if not allows(deploy_policy, "iam:PassRole", infrastructure, context={"iam:PassedToService": ECS}):
            problems.append(f"{where}: deploy role may not pass the ECS infrastructure role {infrastructure}")
    return problems


ECS = "ecs.amazonaws.com"


def run_stack(run: ProgramRun) -> str:
    """The stack name, read off the deploy role path (``/crossdeploy/<stack>/deploy/``)."""
    role = next(r for r in run.of_type("aws:iam/role:Role") if "/deploy/" in r.outputs["arn"])
    return role.inputs["path"].split("/")[2]


def _codedeploy_problems(run: ProgramRun, where: str, action: dict, deploy_role, deploy_policy: str) -> list[str]:
    """A CodeDeployToECS action works only if its application and group exist where it runs, the deploy role may
    deploy to that group with the group's configuration, and may pass the roles the task definition names."""
    problems = []
    conf, region, account = action["configuration"], action["region"], deploy_role.account
    groups = [g for g in run.of_type("aws:codedeploy/deploymentGroup:DeploymentGroup")
              if (g.account, g.region, g.inputs["appName"], g.inputs["deploymentGroupName"]) ==
              (account, region, conf["ApplicationName"], conf["DeploymentGroupName"])]
    if len(groups) != 1:
        return [f"{where}: no deployment group {conf['ApplicationName']}/{conf['DeploymentGroupName']} in "
                f"{account} {region}"]
    group = groups[0]
    prefix = f"arn:aws:codedeploy:{region}:{account}"
    for api, resource in (
            ("codedeploy:CreateDeployment", group.outputs["arn"]),
            ("codedeploy:GetDeployment", group.outputs["arn"]),
            ("codedeploy:GetApplicationRevision", f"{prefix}:application:{conf['ApplicationName']}"),
            ("codedeploy:RegisterApplicationRevision", f"{prefix}:application:{conf['ApplicationName']}"),
            ("codedeploy:GetDeploymentConfig", f"{prefix}:deploymentconfig:{group.inputs['deploymentConfigName']}")):
        if not allows(deploy_policy, api, resource):
            problems.append(f"{where}: deploy role may not {api} {resource}")
    service = [r for r in run.of_type("aws:ecs/service:Service") if (r.account, r.region) == (account, region)
               and r.inputs["name"] == group.inputs["ecsService"]["serviceName"]]
    task_definitions = [r for r in run.of_type("aws:ecs/taskDefinition:TaskDefinition")
                        if service and r.outputs["arn"] == service[0].inputs["taskDefinition"]]
    if len(task_definitions) != 1:
        return [*problems, f"{where}: the group's service has no task definition crossdeploy created"]
    for key in ("executionRoleArn", "taskRoleArn"):
        role = task_definitions[0].inputs[key]
        if not allows(deploy_policy, "iam:PassRole", role,
                      context={"iam:PassedToService": "ecs-tasks.amazonaws.com"}):
            problems.append(f"{where}: deploy role may not pass {role}")
    return problems


def test_trust_bucket_key_and_role_policies_agree_for_every_deploy_action(run) -> None:
    assert pipelines(run)
    assert any(engine_actions(p) for p in pipelines(run)), "the engine path is checked too"
    assert check_agreement(run) == []


def test_every_bake_can_read_the_alarms_it_names(prod_run) -> None:
    assert any(engine_actions(p, bake=True) for p in pipelines(prod_run)), "prod bakes"
    assert check_bake_agreement(prod_run) == []


def test_the_bake_check_catches_a_deploy_role_without_alarm_rights(monkeypatch, prod_run) -> None:
    monkeypatch.setattr(components.deploy_role, "bake_alarm_arns", lambda cfg, account: ())
    problems = check_bake_agreement(run_program(stack_config(ROOT / "Pulumi.prod.yaml"), stack="prod"))
    assert any("deploy role may not read arn:aws:cloudwatch:us-west-2:" in p for p in problems), problems


def test_the_agreement_check_catches_an_engine_the_deploy_role_does_not_trust(monkeypatch) -> None:
    monkeypatch.setattr(components.deploy_role, "trusted_principals",
                        lambda cfg, account: (components.naming.pipeline_role_pattern(cfg),))
    problems = check_agreement(run_program(config(), stack="broken"))
    assert any("does not trust the engine role" in p for p in problems), problems


def engine_role(run: ProgramRun):
    (function,) = [f for f in run.of_type("aws:lambda/function:Function") if f.inputs["handler"] == ENGINE_HANDLER]
    return by_output(run, "arn", function.inputs["role"]), function


def test_engine_role_may_assume_exactly_the_deploy_roles_of_its_environments(run) -> None:
    role, _ = engine_role(run)
    policy = role_policy(run, role)
    deploy_roles = [r for r in run.of_type("aws:iam/role:Role") if "/deploy/" in r.outputs["arn"]]
    assert len(deploy_roles) == 2
    for deploy in deploy_roles:
        assert allows(policy, "sts:AssumeRole", deploy.outputs["arn"])
        assert allows(deploy.inputs["assumeRolePolicy"], "sts:AssumeRole", principal_arn=role.outputs["arn"])
        other = deploy.outputs["arn"].replace("/deploy/", "/workload/")
        assert not allows(policy, "sts:AssumeRole", other)
    stack = run_stack(run)
    for foreign in (f"arn:aws:iam::999999999999:role/crossdeploy/{stack}/deploy/crossdeploy-{stack}-deploy",
                    f"arn:aws:iam::{role.account}:role/crossdeploy/{stack}/pipeline/x",
                    f"arn:aws:iam::{PROD}:role/OrganizationAccountAccessRole"):
        assert not allows(policy, "sts:AssumeRole", foreign), foreign
    # A role outside the trusted names (a build role, say) may not assume a deploy role.
    assert not allows(deploy_roles[0].inputs["assumeRolePolicy"], "sts:AssumeRole",
                      principal_arn=role.outputs["arn"].replace("/engine/", "/build/"))


def test_deploy_role_follows_and_stops_only_its_own_service_deployments(base_run) -> None:
    for role in base_run.of_type("aws:iam/role:Role"):
        if "/deploy/" not in role.outputs["arn"]:
            continue
        policy, account = role_policy(base_run, role), role.account
        own = f"arn:aws:ecs:us-east-2:{account}:service-deployment/crossdeploy/orders/abc"
        own_service = f"arn:aws:ecs:us-east-2:{account}:service/crossdeploy/orders"
        for api in ("ecs:DescribeServiceDeployments", "ecs:StopServiceDeployment"):
            assert allows(policy, api, own) and allows(policy, api, own_service)
            assert not allows(policy, api, f"arn:aws:ecs:us-east-2:{account}:service-deployment/other/orders/abc")
            assert not allows(policy, api, "arn:aws:ecs:us-east-2:999999999999:service-deployment/crossdeploy/o/a")
            assert not allows(policy, api, f"arn:aws:ecs:ap-south-1:{account}:service-deployment/crossdeploy/o/a")
        assert allows(policy, "ecs:ListServiceDeployments", own_service)
        assert not allows(policy, "ecs:ListServiceDeployments", f"arn:aws:ecs:us-east-2:{account}:service/other/x")
        assert not allows(policy, "ecs:CreateService", own_service)


def test_infrastructure_role_is_passed_only_to_ecs_and_only_where_ecs_shifts_traffic(prod_run, base_run) -> None:
    # prod: test is rolling (444455556666), prod is ECS-native canary (777788889999).
    for run, native_accounts in ((prod_run, {PROD}), (base_run, set())):
        stack = run_stack(run)
        for role in run.of_type("aws:iam/role:Role"):
            if "/deploy/" not in role.outputs["arn"]:
                continue
            policy, account = role_policy(run, role), role.account
            infrastructure = (f"arn:aws:iam::{account}:role/crossdeploy/{stack}/infrastructure/"
                              f"crossdeploy-{stack}-ecs-infrastructure")
            assert allows(policy, "iam:PassRole", infrastructure,
                          context={"iam:PassedToService": ECS}) == (account in native_accounts)
            for service in ("ecs-tasks.amazonaws.com", "lambda.amazonaws.com", "codedeploy.amazonaws.com"):
                assert not allows(policy, "iam:PassRole", infrastructure, context={"iam:PassedToService": service})


def test_pipeline_role_invokes_exactly_the_engine_and_reads_exactly_its_document(base_run) -> None:
    _, function = engine_role(base_run)
    (bucket,) = [b for b in base_run.of_type("aws:s3/bucket:Bucket") if b.name == "deploy-config-bucket"]
    for pipeline in pipelines(base_run):
        policy = role_policy(base_run, by_output(base_run, "arn", pipeline.inputs["roleArn"]))
        assert allows(policy, "lambda:InvokeFunction", function.outputs["arn"])
        assert not allows(policy, "lambda:InvokeFunction", function.outputs["arn"] + "-other")
        assert not allows(policy, "lambda:InvokeFunction", f"arn:aws:lambda:us-east-2:{function.account}:function:x")
        (source,) = [a for a in pipeline.inputs["stages"][0]["actions"] if a["name"] == "Config"]
        own = source["configuration"]["S3ObjectKey"]
        others = [o.inputs["key"] for o in base_run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
                  if o.inputs["key"] != own]
        assert others
        for key in others:
            assert not allows(policy, "s3:GetObject", f"{bucket.outputs['arn']}/{key}")
        assert not allows(policy, "s3:PutObject", f"{bucket.outputs['arn']}/{own}")
        # Engine-only pipelines run no action as a deploy role: the pipeline role may assume none.
        assert not any("sts:AssumeRole" in as_list(s["Action"]) for s in statements(policy))


def test_the_agreement_check_catches_a_key_policy_naming_the_wrong_role(monkeypatch) -> None:
    # Shift the ARN the resource policies name away from the role actually created: the classic 403.
    real = components.naming.deploy_role_arn
    monkeypatch.setattr(components.naming, "deploy_role_arn",
                        lambda cfg, account: real(cfg, account).replace("/deploy/", "/other/"))
    # (Artifacts are read by deploy roles only for ECS and CodeDeploy actions: an existing service has them.)
    legacy = {"name": "legacy", "existing": True, "executionRoleName": "legacy-exec", "cluster": "legacy"}
    problems = check_agreement(run_program(config(**{"crossdeploy:services": [{"name": "orders"}, legacy]}),
                                           stack="broken"))
    assert any("bucket policy denies s3:GetObject" in p for p in problems)
    assert any("key policy denies kms:Decrypt" in p for p in problems)


def test_deploy_role_cannot_touch_other_services_or_pass_other_roles(base_run) -> None:
    for role in base_run.of_type("aws:iam/role:Role"):
        if "/deploy/" not in role.outputs["arn"]:
            continue
        policy = role_policy(base_run, role)
        account = role.account
        assert not allows(policy, "ecs:UpdateService", f"arn:aws:ecs:us-east-2:{account}:service/other/orders")
        assert not allows(policy, "ecs:DeleteService", f"arn:aws:ecs:us-east-2:{account}:service/crossdeploy/orders")
        assert not allows(policy, "iam:PassRole", f"arn:aws:iam::{account}:role/Admin",
                          context={"iam:PassedToService": "ecs-tasks.amazonaws.com"})
        task_role = f"arn:aws:iam::{account}:role/crossdeploy/test/workload/test-orders-task"
        assert allows(policy, "iam:PassRole", task_role, context={"iam:PassedToService": "ecs-tasks.amazonaws.com"})
        assert not allows(policy, "iam:PassRole", task_role, context={"iam:PassedToService": "lambda.amazonaws.com"})
        assert not allows(policy, "s3:PutObject", "arn:aws:s3:::any/x")


def test_build_role_writes_only_its_own_logs_and_reads_only_its_repositories(base_run) -> None:
    project = by_output(base_run, "name", "crossdeploy-test-orders-imagedefs")
    build_role = by_output(base_run, "arn", project.inputs["serviceRole"])
    policy = role_policy(base_run, build_role)
    log_group = by_output(base_run, "name", "/aws/codebuild/crossdeploy-test-orders-imagedefs")
    assert allows(policy, "logs:PutLogEvents", log_group.outputs["arn"] + ":log-stream:x")
    assert not allows(policy, "logs:PutLogEvents", "arn:aws:logs:us-east-2:111111111111:log-group:other:log-stream:x")
    for region in ("us-east-2", "eu-west-1"):
        assert allows(policy, "ecr:DescribeImages", f"arn:aws:ecr:{region}:111111111111:repository/orders")
    assert not allows(policy, "ecr:DescribeImages", "arn:aws:ecr:us-east-2:111111111111:repository/team/payments")
    assert not allows(policy, "sts:AssumeRole", "arn:aws:iam::444455556666:role/crossdeploy/test/deploy/x")
    # The build role must not be able to assume deploy roles: it lives outside the trusted pipeline path.
    deploy = next(r for r in base_run.of_type("aws:iam/role:Role") if "/deploy/" in r.outputs["arn"])
    assert not allows(deploy.inputs["assumeRolePolicy"], "sts:AssumeRole", principal_arn=build_role.outputs["arn"])


def test_the_agreement_check_catches_a_deploy_role_without_codedeploy_rights(monkeypatch) -> None:
    monkeypatch.setattr(components.deploy_role, "codedeploy_targets", lambda cfg, account: ())
    environments = [{"name": "qa", "accountId": "444455556666", "regions": ["us-east-2"]},
                    {"name": "prod", "accountId": PROD, "regions": ["us-east-2"], "strategy": "codedeploy"}]
    problems = check_agreement(run_program(config(**{"crossdeploy:environments": environments}), stack="cd"))
    assert any("may not codedeploy:CreateDeployment" in p for p in problems), problems


def test_every_inline_policy_fits_iam_limit(run) -> None:
    for policy in run.of_type("aws:iam/rolePolicy:RolePolicy"):
        assert inline_policy_size(policy.inputs["policy"]) <= INLINE_POLICY_LIMIT, policy.name


def _deploy_role_policy_for(count: int) -> str:
    services = [{"name": f"svc-{i:03d}", **({"cluster": f"team-{i % 4}"} if i % 2 else {})} for i in range(count)]
    environments = [{"name": "prod", "accountId": PROD, "regions": ["us-east-2", "us-west-2", "eu-west-1"],
                     "strategy": "codedeploy",
                     "blueGreen": {"trafficShift": {"type": "linear", "percent": 20, "intervalMinutes": 2}}}]
    raw = {"tools": {"accountId": "111111111111"}, "environments": environments, "services": services,
           "release": {"source": {"provider": "codecommit", "repository": "r"}, "serviceTimeoutMinutes": 60}}
    cfg = parse(raw, project="crossdeploy", stack="prod", aws_region="us-east-2")
    regions = cfg.account_regions(PROD)
    args = DeployRoleArgs(
        provider=None, partition="aws", account_id=PROD, role_name=deploy_role_name(cfg),
        path=iam_path(cfg, "deploy"), tools_account_id="111111111111",
        trusted_principal_patterns=(pipeline_role_pattern(cfg),), targets=deploy_targets(cfg, PROD),
        passable_role_arns=passable_roles(cfg, PROD),
        # (bucket ARNs are Outputs, concatenated into the document: left out here, three ARNs of ~60 characters)
        artifact_key_arns=tuple(f"arn:aws:kms:{r}:111111111111:key/mrk-{'0' * 32}" for r in regions),
        scheduled_task_regions=regions, scheduled_task_role_names=("ecsEventsRole", "ecsTaskExecutionRole"),
        infrastructure_role_arns=(f"arn:aws:iam::{PROD}:role/crossdeploy/prod/infrastructure/x",),
        codedeploy_targets=codedeploy_targets(cfg, PROD), codedeploy_release=True)
    return json.dumps(deploy_role_policy(args))


def test_deploy_role_policy_stays_within_iam_limit_at_300_services() -> None:
    """The deploy role's grant grows with regions and clusters, not with services: one ARN per service and region
    overflows IAM's 10,240 characters at a few dozen services (measured: 28,111 at 40 services, 3 regions)."""
    policy = _deploy_role_policy_for(300)
    # Five clusters in three regions, every right at once (services, service deployments, CodeDeploy, scheduled
    # tasks, the ECS infrastructure role): still 40 % of the limit left for more clusters and regions.
    assert inline_policy_size(policy) < INLINE_POLICY_LIMIT * 0.6, inline_policy_size(policy)
    assert inline_policy_size(policy) == inline_policy_size(_deploy_role_policy_for(30)), "grows with services"
    regions = ["us-east-2", "us-west-2", "eu-west-1"]
    # ...and it still grants exactly what the services need: services in the stack's clusters, not elsewhere.
    for region in regions:
        assert allows(policy, "ecs:UpdateService", f"arn:aws:ecs:{region}:{PROD}:service/team-1/svc-299")
        assert not allows(policy, "ecs:UpdateService", f"arn:aws:ecs:{region}:{PROD}:service/other-team/svc-299")
        assert allows(policy, "codedeploy:CreateDeployment",
                      f"arn:aws:codedeploy:{region}:{PROD}:deploymentgroup:crossdeploy-prod-prod/svc-123")
    with pytest.raises(ValueError, match=r"would be \d+ characters; IAM allows 10240"):
        check_inline_policy_size("r", json.dumps({"Statement": ["x" * 10_300]}))
