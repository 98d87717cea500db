"""The release pipeline on the Pulumi side: stages, the validation build run for real from its bundle, the state
machine as registered (statelint, bounded Maps), the step Lambdas and every role's least privilege."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import PROD, QA, SAMPLES, TOOLS, by_output, config, role_policy
from iam import allows

from components.release_state_machine import definition, lambda_functions
from handlers.release_limits import MAX_ACCOUNT_REGIONS
from offline.mocks import run_program

CODECOMMIT = {"source": {"provider": "codecommit", "repository": "platform-releases"}, "requireApproval": True,
              "maxConcurrency": 7, "passRoleNames": ["ecsEventsRole", "cleanup-task"]}
CODESTAR = {"source": {"provider": "codestar", "repository": "acme/releases", "branch": "release",
                       "connectionArn": "arn:aws:codeconnections:us-east-2:111111111111:connection/abc"},
            "file": "releases/deployment.yaml"}


@pytest.fixture(scope="module")
def release_run():
    return run_program(config(**{"crossdeploy:release": CODECOMMIT}), stack="rel")


def release_pipeline(run):
    return by_output(run, "name", "crossdeploy-rel-release", "aws:codepipeline/pipeline:Pipeline")


def test_stages_validate_approve_then_release(release_run) -> None:
    pipeline = release_pipeline(release_run)
    stages = pipeline.inputs["stages"]
    assert [s["name"] for s in stages] == ["Source", "Validate", "Approve", "Release"]
    source = stages[0]["actions"][0]
    assert (source["provider"], source["configuration"]) == ("CodeCommit", {
        "RepositoryName": "platform-releases", "BranchName": "main", "PollForSourceChanges": "false"})
    invoke = stages[3]["actions"][0]
    machine = release_run.of_type("aws:sfn/stateMachine:StateMachine")[0]
    assert (invoke["category"], invoke["provider"]) == ("Invoke", "StepFunctions")
    assert invoke["configuration"]["StateMachineArn"] == machine.outputs["arn"]
    assert invoke["configuration"]["InputType"] == "FilePath"
    assert invoke["configuration"]["Input"] == "sfn-input.json"
    assert invoke["inputArtifacts"] == stages[1]["actions"][0]["outputArtifacts"]
    # A push to the release branch starts it.
    rule = next(r for r in release_run.of_type("aws:cloudwatch/eventRule:EventRule") if "release" in r.name)
    pattern = json.loads(rule.inputs["eventPattern"])
    assert pattern["resources"] == [f"arn:aws:codecommit:us-east-2:{TOOLS}:platform-releases"]
    assert pattern["detail"]["referenceName"] == ["main"]


def test_codestar_source_with_a_file_filter() -> None:
    run = run_program(config(**{"crossdeploy:release": CODESTAR}), stack="rel")
    pipeline = release_pipeline(run)
    source = pipeline.inputs["stages"][0]["actions"][0]
    assert source["provider"] == "CodeStarSourceConnection"
    assert source["configuration"]["FullRepositoryId"] == "acme/releases"
    assert [s["name"] for s in pipeline.inputs["stages"]] == ["Source", "Validate", "Release"]
    push = pipeline.inputs["triggers"][0]["gitConfiguration"]["pushes"][0]
    assert push == {"branches": {"includes": ["release"]}, "filePaths": {"includes": ["releases/deployment.yaml"]}}
    policy = role_policy(run, by_output(run, "arn", pipeline.inputs["roleArn"]))
    assert allows(policy, "codestar-connections:UseConnection", CODESTAR["source"]["connectionArn"])
    assert not allows(policy, "codecommit:GetBranch", f"arn:aws:codecommit:us-east-2:{TOOLS}:anything")


def test_registered_state_machine_is_the_tested_definition_with_the_configured_bound(release_run, tmp_path) -> None:
    machine = release_run.of_type("aws:sfn/stateMachine:StateMachine")[0]
    functions = {r.inputs["handler"]: r.outputs["arn"] for r in release_run.of_type("aws:lambda/function:Function")
                 if r.inputs["handler"].startswith("handlers.release.")}
    arns = {step: functions[handler] for step, handler in lambda_functions().items()}
    registered = json.loads(machine.inputs["definition"])
    assert registered == definition(arns, max_concurrency=7)
    maps = [s for s in _states(registered) if s.get("Type") == "Map"]
    # The bound of every account-region's Map Runs; the account-regions themselves all run at once.
    assert sorted(m["MaxConcurrency"] for m in maps) == [7, 7, 7, 7, MAX_ACCOUNT_REGIONS, MAX_ACCOUNT_REGIONS]
    # statelint 3.1.0 does not know ItemReader's ReaderConfig.InputType (tests/test_release_state_machine.py checks
    # it is the only complaint): lint the rest.
    for state in maps:
        state.get("ItemReader", {}).get("ReaderConfig", {}).pop("InputType", None)
    path = tmp_path / "release.asl.json"
    path.write_text(json.dumps(registered))
    statelint = Path(sys.executable).with_name("statelint")
    result = subprocess.run([str(statelint), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _states(machine: dict) -> list[dict]:
    found = []
    for state in machine["States"].values():
        found.append(state)
        for sub in ("Iterator", "ItemProcessor"):
            if sub in state:
                found.extend(_states(state[sub]))
    return found


def test_every_step_is_a_lambda_running_the_handler_the_tests_run(release_run) -> None:
    functions = [r for r in release_run.of_type("aws:lambda/function:Function")
                 if r.inputs["handler"].startswith("handlers.release.")]
    assert sorted(f.inputs["handler"] for f in functions) == sorted(lambda_functions().values())
    for function in functions:
        module, attribute = function.inputs["handler"].rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attribute))
        assert "handlers/release.py" in function.inputs["code"].assets
        variables = function.inputs["environment"]["variables"]
        assert variables["CROSSDEPLOY_REGISTRY_ID"] == TOOLS and variables["CROSSDEPLOY_HOME_REGION"] == "us-east-2"
        assert ("CROSSDEPLOY_TOPIC_ARN" in variables) == function.inputs["handler"].endswith(".notify")
        # Rolling services deploy through the engine from their deploy documents: the engine ships with the steps,
        # with the context naming every service's document, and the steps know the bucket.
        assert "handlers/deploy_engine.py" in function.inputs["code"].assets
        context = json.loads(function.inputs["code"].assets["release-context.json"].text)
        assert context["services"] == {"crossdeploy/orders": "services/orders/deploy.zip",
                                       "core/payments": "services/team-payments/deploy.zip"}
        bucket = next(b for b in release_run.of_type("aws:s3/bucket:Bucket")
                      if b.name.startswith("deploy-config"))
        assert variables["CROSSDEPLOY_CONFIG_BUCKET"] == bucket.outputs["bucket"]
        assert variables["CROSSDEPLOY_RELEASE_BUCKET"] == _artifact_bucket(release_run).outputs["bucket"]


def _artifact_bucket(run):
    return next(b for b in run.of_type("aws:s3/bucket:Bucket")
                if b.region == "us-east-2" and b.account == TOOLS and b.name.startswith("artifacts"))


def test_roles_have_exactly_what_their_steps_use(release_run) -> None:
    functions = {r.inputs["handler"].rsplit(".", 1)[1]: r for r in release_run.of_type("aws:lambda/function:Function")
                 if r.inputs["handler"].startswith("handlers.release.")}
    steps = role_policy(release_run, by_output(release_run, "arn", functions["prepare"].inputs["role"]))
    notify = role_policy(release_run, by_output(release_run, "arn", functions["notify"].inputs["role"]))
    deploy_roles = [r for r in release_run.of_type("aws:iam/role:Role") if "/deploy/" in r.outputs["arn"]]
    steps_role_arn = functions["prepare"].inputs["role"]
    for deploy in deploy_roles:
        assert allows(steps, "sts:AssumeRole", deploy.outputs["arn"])
        assert allows(deploy.inputs["assumeRolePolicy"], "sts:AssumeRole", principal_arn=steps_role_arn)
        assert not allows(deploy.inputs["assumeRolePolicy"], "sts:AssumeRole",
                          principal_arn=functions["notify"].inputs["role"])
    assert allows(steps, "ecr:DescribeImages", f"arn:aws:ecr:eu-west-1:{TOOLS}:repository/any/repo")
    assert not allows(steps, "sns:Publish", "arn:aws:sns:us-east-2:111111111111:x")
    # Deploy documents: read (any version) under services/ of the config bucket, decrypt with its key; no more.
    bucket = next(b for b in release_run.of_type("aws:s3/bucket:Bucket") if b.name.startswith("deploy-config"))
    document = f"{bucket.outputs['arn']}/services/orders/deploy.zip"
    for action in ("s3:GetObject", "s3:GetObjectVersion"):
        assert allows(steps, action, document)
    assert not allows(steps, "s3:PutObject", document)
    assert not allows(steps, "s3:GetObject", f"{bucket.outputs['arn']}/other/x")
    home_key = next(k.outputs["arn"] for k in release_run.of_type("aws:kms/key:Key")
                    if k.region == "us-east-2" and k.account == TOOLS)
    assert allows(steps, "kms:Decrypt", home_key) and not allows(steps, "kms:Encrypt", home_key)
    assert not allows(notify, "s3:GetObject", document)
    topic = release_run.of_type("aws:sns/topic:Topic")[0].outputs["arn"]
    assert allows(notify, "sns:Publish", topic)
    assert not allows(notify, "sts:AssumeRole", deploy_roles[0].outputs["arn"])
    machine = release_run.of_type("aws:sfn/stateMachine:StateMachine")[0]
    machine_policy = role_policy(release_run, by_output(release_run, "arn", machine.inputs["roleArn"]))
    for function in functions.values():
        assert allows(machine_policy, "lambda:InvokeFunction", function.outputs["arn"])
    assert not allows(machine_policy, "lambda:InvokeFunction", "arn:aws:lambda:us-east-2:111111111111:function:x")
    _distributed_map_rights(release_run, steps, notify, machine_policy, machine, home_key)
    pipeline = release_pipeline(release_run)
    pipeline_policy = role_policy(release_run, by_output(release_run, "arn", pipeline.inputs["roleArn"]))
    assert allows(pipeline_policy, "states:StartExecution", machine.outputs["arn"])
    assert allows(pipeline_policy, "states:DescribeExecution",
                  f"arn:aws:states:us-east-2:{TOOLS}:execution:crossdeploy-rel-release:release-1")
    assert not allows(pipeline_policy, "states:StartExecution", "arn:aws:states:us-east-2:111111111111:stateMachine:x")


def _distributed_map_rights(run, steps: str, notify: str, machine_policy: str, machine, home_key: str) -> None:
    """The Distributed Maps' pieces, each to exactly its own: the machine starts, follows and stops only its own
    child executions; prepare writes items, the machine reads them and writes results, notify reads results."""
    artifacts = _artifact_bucket(run).outputs["arn"]
    arn, name = machine.outputs["arn"], machine.outputs["name"]
    child = f"arn:aws:states:us-east-2:{TOOLS}:execution:{name}/DeployServices:0b5d3c2e-8a5f-4f4e-9a53-6a1c2d3e4f50"
    assert allows(machine_policy, "states:StartExecution", arn)
    assert not allows(machine_policy, "states:StartExecution", f"arn:aws:states:us-east-2:{TOOLS}:stateMachine:other")
    for action in ("states:DescribeExecution", "states:StopExecution"):
        assert allows(machine_policy, action, child)
        assert not allows(machine_policy, action, f"arn:aws:states:us-east-2:{TOOLS}:execution:other/M:1")
    items = f"{artifacts}/release-runs/release-1/items/{PROD}-us-east-2/services.json"
    results = f"{artifacts}/release-runs/release-1/results/deploy/{PROD}-us-east-2/run/SUCCEEDED_0.json"
    manifest = f"{artifacts}/release-manifests/build-1.json"
    pipeline_artifact = f"{artifacts}/crossdeploy-rel-release/ReleaseSou/abc.zip"
    expected = {  # (policy, action, object) -> allowed
        (steps, "s3:GetObject", manifest): True, (steps, "s3:PutObject", items): True,
        (steps, "s3:PutObject", results): False, (steps, "s3:GetObject", pipeline_artifact): False,
        (machine_policy, "s3:GetObject", items): True, (machine_policy, "s3:PutObject", results): True,
        (machine_policy, "s3:PutObject", items): False, (machine_policy, "s3:GetObject", manifest): False,
        (machine_policy, "s3:GetObject", pipeline_artifact): False,
        (notify, "s3:GetObject", results): True, (notify, "s3:GetObject", items): False,
        (notify, "s3:PutObject", results): False,
    }
    assert {k: allows(*k) for k in expected} == expected
    assert allows(notify, "s3:ListBucket", artifacts, context={"s3:prefix": "release-runs/release-1/results/"})
    assert not allows(notify, "s3:ListBucket", artifacts, context={"s3:prefix": "crossdeploy-rel-release/"})
    for policy in (steps, machine_policy):
        assert allows(policy, "kms:GenerateDataKey", home_key) and allows(policy, "kms:Decrypt", home_key)
    assert allows(notify, "kms:Decrypt", home_key) and not allows(notify, "kms:Decrypt",
                                                                   "arn:aws:kms:us-east-2:111111111111:key/x")


def test_deploy_roles_gain_only_the_scheduled_task_rights(release_run, base_run) -> None:
    for run, with_release in ((release_run, True), (base_run, False)):
        for deploy in (r for r in run.of_type("aws:iam/role:Role") if "/deploy/" in r.outputs["arn"]):
            policy = role_policy(run, deploy)
            account = deploy.account
            rule = f"arn:aws:events:us-east-2:{account}:rule/nightly-cleanup"
            assert allows(policy, "events:PutTargets", rule) is with_release
            assert not allows(policy, "events:PutRule", rule)
            assert not allows(policy, "events:PutTargets", "arn:aws:events:us-east-2:999999999999:rule/x")
            events_role = f"arn:aws:iam::{account}:role/ecsEventsRole"
            assert allows(policy, "iam:PassRole", events_role,
                          context={"iam:PassedToService": "events.amazonaws.com"}) is with_release
            assert not allows(policy, "iam:PassRole", f"arn:aws:iam::{account}:role/Admin",
                              context={"iam:PassedToService": "events.amazonaws.com"})


def _bundle(run) -> dict[str, str]:
    # (The other objects are the services' deploy documents: tests/test_engine_program.py.)
    [bundle] = [o for o in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
                if "release-context.json" in o.inputs["source"].assets]
    return {name: asset.text for name, asset in bundle.inputs["source"].assets.items()}


def test_bundle_context_names_the_deploy_roles(release_run) -> None:
    context = json.loads(_bundle(release_run)["release-context.json"])
    roles = {r.account: r.outputs["arn"] for r in release_run.of_type("aws:iam/role:Role")
             if "/deploy/" in r.outputs["arn"]}
    assert context["registryId"] == TOOLS and context["homeRegion"] == "us-east-2"
    assert {n: (e["accountId"], e["regions"], e["deployRoleArn"]) for n, e in context["environments"].items()} == {
        "qa": (QA, ["us-east-2"], roles[QA]), "prod": (PROD, ["us-east-2", "eu-west-1"], roles[PROD])}
    assert not any(name.endswith(".so") for name in _bundle(release_run)), "pure Python only"


def _run_build(run, tmp_path: Path, release_text: str) -> subprocess.CompletedProcess:
    """Run the registered buildspec's commands (after the S3 download, which the zip below stands in for)."""
    project = by_output(run, "name", "crossdeploy-rel-release-validate", "aws:codebuild/project:Project")
    spec = yaml.safe_load(project.inputs["source"]["buildspec"])
    tools_dir = tmp_path / "tools"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in _bundle(run).items():
            archive.writestr(name, text)
    Path(f"{tools_dir}.zip").write_bytes(buffer.getvalue())
    src = tmp_path / "src"
    src.mkdir()
    (src / spec["env"]["variables"]["RELEASE_FILE"]).write_text(release_text)
    commands = spec["phases"]["build"]["commands"]
    download = [c for c in commands if c.startswith('aws s3 cp "$TOOLS_BUNDLE"')]
    assert len(download) == 1
    # The manifest's upload to the artifact bucket: a copy into tmp_path/uploaded/<key> stands in for it.
    upload = 'cd "$CODEBUILD_SRC_DIR" && aws s3 cp release.json "s3://$RELEASE_BUCKET/$MANIFEST_KEY"'
    assert upload in commands
    stand_in = 'cd "$CODEBUILD_SRC_DIR" && mkdir -p "$HOME/uploaded/release-manifests" && ' \
               'cp release.json "$HOME/uploaded/$MANIFEST_KEY"'
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "CODEBUILD_SRC_DIR": str(src),
           "RELEASE_FILE": spec["env"]["variables"]["RELEASE_FILE"], "TOOLS_DIR": str(tools_dir),
           "HOME": str(tmp_path), "RELEASE_BUCKET": spec["env"]["variables"]["RELEASE_BUCKET"],
           "CODEBUILD_BUILD_ID": "crossdeploy-rel-release-validate:4b1a0f6e-0000-4000-8000-000000000001"}
    script = [stand_in if c == upload else c for c in commands if c not in download]
    return subprocess.run(["bash", "-e", "-c", "\n".join(script)], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)


def _extended_seed() -> str:
    seed = (SAMPLES / "deployment.yaml").read_text().replace("11111111111.dkr", f"{TOOLS}.dkr")
    seed = seed.replace("    cwRuleName:", "    environment: qa\n    cwRuleName:")
    return seed.replace("    clusterName:", "    environment: prod\n    clusterName:")


def test_the_build_validates_and_converts_with_only_the_bundled_code(release_run, tmp_path) -> None:
    if not os.path.exists(Path(sys.executable).with_name("python3")):
        pytest.skip("no python3 next to the interpreter")
    result = _run_build(release_run, tmp_path, _extended_seed())
    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads((tmp_path / "src" / "sfn-input.json").read_text())
    # The execution input only says where the manifest is (any size fits): prepare reads it from there.
    key = "release-manifests/4b1a0f6e-0000-4000-8000-000000000001.json"
    assert payload == {"manifestLocation": {"bucket": _artifact_bucket(release_run).outputs["bucket"], "key": key}}
    from handlers.release import validate_manifest

    manifest = json.loads((tmp_path / "uploaded" / key).read_text())
    services, tasks = validate_manifest(manifest, TOOLS, "aws")
    assert [(s["accountId"], s["region"]) for s in services] == [(PROD, "us-east-2"), (PROD, "eu-west-1")]
    assert [(t["accountId"], t["ruleName"]) for t in tasks] == [(QA, "test-rating-cleanup")]


def test_the_build_fails_on_a_bad_release_file_and_writes_nothing(release_run, tmp_path) -> None:
    result = _run_build(release_run, tmp_path, (SAMPLES / "deployment.yaml").read_text())
    assert result.returncode != 0
    assert "deployment.yaml:2:" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "src" / "sfn-input.json").exists()


@pytest.fixture(scope="module")
def codedeploy_run():
    """The prod stack with its prod environment on CodeDeploy blue/green (the stack itself is ECS-native canary),
    and web/storefront without its smoke test (so the context shows both kinds of service)."""
    from conftest import ROOT, stack_config

    cfg = stack_config(ROOT / "Pulumi.prod.yaml")
    prod = next(e for e in cfg["crossdeploy:environments"] if e["name"] == "prod")
    prod["strategy"] = "codedeploy"
    prod["blueGreen"]["trafficShift"]["type"] = "canary"  # CodeDeploy names its shift; ECS takes the strategy's
    storefront = next(s for s in cfg["crossdeploy:services"] if s["name"] == "web/storefront")
    del storefront["smokeTest"]
    return run_program(cfg, stack="prod")


def test_blue_green_environments_reach_the_release_with_their_codedeploy_names_and_rights(codedeploy_run) -> None:
    prod_run = codedeploy_run
    context = json.loads(_bundle(prod_run)["release-context.json"])
    assert "blueGreen" not in context["environments"]["test"]  # rolling
    blue_green = context["environments"]["prod"]["blueGreen"]
    groups = {(g.account, g.region, g.inputs["appName"], g.inputs["deploymentGroupName"], g.inputs["ecsService"][
        "serviceName"]) for g in prod_run.of_type("aws:codedeploy/deploymentGroup:DeploymentGroup")}
    prod_account = context["environments"]["prod"]["accountId"]
    for region in context["environments"]["prod"]["regions"]:
        for service, group in blue_green["deploymentGroups"].items():
            # The names the release will use are those of deployment groups that exist there, for that service.
            assert (prod_account, region, blue_green["application"], group, service) in groups
    assert sorted(blue_green["deploymentGroups"]) == ["orders", "payments", "storefront"]

    from handlers.release_file import load_context
    assert load_context(context).environments["prod"]  # the validator accepts what the program writes

    deploy = next(r for r in prod_run.of_type("aws:iam/role:Role")
                  if r.account == prod_account and "/deploy/" in r.outputs["arn"])
    policy = role_policy(prod_run, deploy)
    group_arn = f"arn:aws:codedeploy:us-west-2:{prod_account}:deploymentgroup:{blue_green['application']}/orders"
    for action in ("codedeploy:CreateDeployment", "codedeploy:GetDeployment", "codedeploy:StopDeployment",
                   "codedeploy:ListDeployments", "codedeploy:GetDeploymentGroup"):
        assert allows(policy, action, group_arn), action
    other = group_arn.replace(f":deploymentgroup:{blue_green['application']}/", ":deploymentgroup:someone-else/")
    assert not allows(policy, "codedeploy:StopDeployment", other)


def test_without_a_release_the_deploy_role_cannot_stop_deployments() -> None:
    cfg = config(**{"crossdeploy:environments": [
        {"name": "prod", "accountId": PROD, "regions": ["us-east-2"], "strategy": "codedeploy"}]})
    run = run_program(cfg, stack="nr")
    deploy = next(r for r in run.of_type("aws:iam/role:Role") if r.account == PROD and "/deploy/" in r.outputs["arn"])
    policy = role_policy(run, deploy)
    group_arn = f"arn:aws:codedeploy:us-east-2:{PROD}:deploymentgroup:crossdeploy-nr-prod/orders"
    assert allows(policy, "codedeploy:CreateDeployment", group_arn)
    assert not allows(policy, "codedeploy:StopDeployment", group_arn)


def test_codedeploy_context_names_the_smoke_test_hook_of_each_smoke_tested_service(codedeploy_run) -> None:
    from handlers import release
    from handlers.release_file import convert, load_context

    context = json.loads(_bundle(codedeploy_run)["release-context.json"])
    prod = context["environments"]["prod"]
    hook = "crossdeploy-prod-prod-smoke-test"  # naming.smoke_hook_function_name(cfg, "prod")
    # orders and payments have a smokeTest, storefront not: it has a deployment group but no hook.
    assert prod["blueGreen"]["smokeTestHooks"] == {"orders": hook, "payments": hook}
    assert "storefront" in prod["blueGreen"]["deploymentGroups"]
    # The name is that of the hook function the workload creates in each of prod's regions, in prod's account (where
    # CodeDeploy invokes a hook named in the AppSpec), and prod's CodeDeploy service role may invoke each of them.
    functions = [f for f in codedeploy_run.of_type("aws:lambda/function:Function") if f.inputs["name"] == hook]
    assert sorted((f.account, f.region) for f in functions) == [(prod["accountId"], r) for r in sorted(prod["regions"])]
    [codedeploy_role] = [r for r in codedeploy_run.of_type("aws:iam/role:Role") if r.account == prod["accountId"]
                         and r.inputs.get("path") == "/crossdeploy/prod/codedeploy/"]
    policy = role_policy(codedeploy_run, codedeploy_role)
    assert all(allows(policy, "lambda:InvokeFunction", f.outputs["arn"]) for f in functions)
    # The release steps carry the same context, and a release of a smoke-tested service gets the hook in its
    # manifest item (in each region), which the release input check accepts.
    steps = next(f for f in codedeploy_run.of_type("aws:lambda/function:Function")
                 if f.inputs["handler"] == "handlers.release.prepare")
    assert json.loads(steps.inputs["code"].assets["release-context.json"].text)["environments"]["prod"] == prod
    text = "".join(f"""  - service: {name}
    clusterName: crossdeploy
    serviceName: {name}
    image: "{TOOLS}.dkr.ecr.us-east-2.amazonaws.com/{name}:1.0.0"
    environment: prod
""" for name in ("orders", "storefront"))
    manifest = convert("services:\n" + text, load_context(context))
    assert [(s["service"], s["region"], s["blueGreen"].get("smokeTestHook")) for s in manifest["services"]] == [
        ("orders", "us-east-2", hook), ("orders", "us-west-2", hook),
        ("storefront", "us-east-2", None), ("storefront", "us-west-2", None)]
    assert release.validate_manifest(manifest, TOOLS, "aws")[0] == manifest["services"]


def test_the_plan_shows_the_waves_of_the_prod_release_per_account_region(prod_run) -> None:
    from offline import plan

    context = json.loads(plan.release_context(prod_run))
    envs = {name: (env["accountId"], env["regions"]) for name, env in context["environments"].items()}
    bound = json.loads(prod_run.of_type("aws:sfn/stateMachine:StateMachine")[0].inputs["definition"])[
        "States"]["DeployGroups"]["ItemProcessor"]["States"]["DeployServices"]["MaxConcurrency"]
    # examples/deployment.yaml by hand: orders in every region of test; payments in every region of prod;
    # storefront in prod's us-east-2; the nightly report in 777788889999 us-west-2.
    services: dict[tuple[str, str], int] = {}
    for env, only in (("test", None), ("prod", None), ("prod", "us-east-2")):
        account, regions = envs[env]
        for region in [only] if only else regions:
            services[(account, region)] = services.get((account, region), 0) + 1
    doc = plan.release_waves_doc(prod_run, "prod")
    assert f"each at most {bound} targets at a time (release.maxConcurrency)" in doc
    tasks = {("777788889999", "us-west-2"): 1}
    rows = [line for line in doc.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(set(services) | set(tasks))
    for account, region in set(services) | set(tasks):
        count, task_count = services.get((account, region), 0), tasks.get((account, region), 0)
        waves = -(-count // bound) + -(-task_count // bound)  # tasks, then services: each in rounds of the bound
        assert f"| {account} | {region} | {count} | {task_count} | {waves} |" in rows
        # The text plan says the same, a line per account-region.
        assert (f"  {account}  {region}  {count} service(s), {task_count} scheduled task(s): {waves} wave(s)"
                in plan.release_waves_lines(plan.stack_release_waves(prod_run, "prod")))
    assert plan.release_waves_doc(prod_run, "test") == ""  # no release file ships for that stack
    assert plan.stack_release_waves(prod_run, "test") is None
