"""The offline mocks answer the workload side's registrations and its one lookup the way AWS would."""

from __future__ import annotations

import gc
import ipaddress
import re
import weakref

import pytest
from pulumi.runtime import MockCallArgs, MockResourceArgs

from offline.mocks import PROVIDER_TYPE, AwsMocks, _outputs, run_program

ACCOUNT = "444455556666"
REGION = "eu-west-1"
ZONES = "aws:index/getAvailabilityZones:getAvailabilityZones"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def out(type_: str, logical: str = "res", region: str = REGION, partition: str = "aws", **inputs) -> tuple[str, dict]:
    """Id and outputs of registering ``type_`` as ``logical`` with ``inputs`` on the test account's provider."""
    resource_id, outputs = _outputs(type_, logical, inputs, ACCOUNT, region, partition)
    assert outputs["id"] == resource_id, "bridged providers list the id among the outputs too"
    assert outputs["region"] == region
    return resource_id, outputs


@pytest.mark.parametrize(("type_", "prefix", "kind"), [
    ("aws:ec2/vpc:Vpc", "vpc", "vpc"),
    ("aws:ec2/subnet:Subnet", "subnet", "subnet"),
    ("aws:ec2/internetGateway:InternetGateway", "igw", "internet-gateway"),
    ("aws:ec2/eip:Eip", "eipalloc", "elastic-ip"),
    ("aws:ec2/natGateway:NatGateway", "nat", "natgateway"),
    ("aws:ec2/routeTable:RouteTable", "rtb", "route-table"),
    ("aws:ec2/securityGroup:SecurityGroup", "sg", "security-group"),
])
def test_ec2_ids_and_arns(type_, prefix, kind) -> None:
    resource_id, outputs = out(type_, availabilityZone="eu-west-1b", cidrBlock="10.1.0.0/16")
    assert re.fullmatch(rf"{prefix}-[0-9a-f]{{17}}", resource_id)
    assert outputs["arn"] == f"arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{resource_id}"
    assert outputs["cidrBlock"] == "10.1.0.0/16"  # inputs come back as outputs
    assert out(type_)[0] == out(type_)[0] != out(type_, "other")[0]


def test_ec2_details() -> None:
    vpc_id, vpc = out("aws:ec2/vpc:Vpc", cidrBlock="10.0.0.0/16")
    group_id, group = out("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup", name="dsg", vpcId=vpc_id)
    assert group_id == vpc["defaultSecurityGroupId"] and group_id.startswith("sg-")
    assert group["name"] == "default"
    _, subnet = out("aws:ec2/subnet:Subnet", availabilityZone="eu-west-1b")
    assert (subnet["availabilityZone"], subnet["availabilityZoneId"]) == ("eu-west-1b", "euw1-az2")
    eip_id, eip = out("aws:ec2/eip:Eip", domain="vpc")
    assert eip["allocationId"] == eip_id
    assert ipaddress.ip_address(eip["publicIp"]).is_global
    assert out("aws:ec2/vpc:Vpc", region="cn-north-1", partition="aws-cn")[1]["arn"].startswith(
        f"arn:aws-cn:ec2:cn-north-1:{ACCOUNT}:vpc/vpc-")


def test_load_balancer_outputs() -> None:
    lb_id, lb = out("aws:lb/loadBalancer:LoadBalancer", name="crossdeploy-prod", loadBalancerType="application")
    assert re.fullmatch(rf"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/app/crossdeploy-prod/"
                        r"[0-9a-f]{16}", lb["arn"])
    assert lb_id == lb["arn"]
    assert lb["arnSuffix"] == lb["arn"].split(":loadbalancer/")[1]
    assert lb["name"] == "crossdeploy-prod"
    assert re.fullmatch(rf"crossdeploy-prod-[0-9]+\.{REGION}\.elb\.amazonaws\.com", lb["dnsName"])
    _, internal = out("aws:lb/loadBalancer:LoadBalancer", name="inner", internal=True)
    assert internal["dnsName"].startswith("internal-inner-")
    # One canonical hosted zone per region.
    elsewhere = out("aws:lb/loadBalancer:LoadBalancer", region="us-east-2")[1]
    assert internal["zoneId"] == lb["zoneId"] != elsewhere["zoneId"]
    assert out("aws:lb/loadBalancer:LoadBalancer", name="n", loadBalancerType="network")[1]["arnSuffix"].startswith(
        "net/n/")


@pytest.mark.parametrize("type_", ["aws:lb/loadBalancer:LoadBalancer", "aws:lb/targetGroup:TargetGroup"])
def test_elb_names_fit_in_32_characters(type_) -> None:
    long_a = "crossdeploy-production-eu-west-1-orders-a"
    long_b = "crossdeploy-production-eu-west-1-orders-b"  # same first 24 characters
    name_a, name_b = out(type_, long_a)[1]["name"], out(type_, long_b)[1]["name"]
    assert len(name_a) <= 32 and len(name_b) <= 32
    assert name_a != name_b and name_a == out(type_, long_a)[1]["name"]
    assert re.fullmatch(r"web-[0-9a-f]{7}", out(type_, "web")[1]["name"])
    assert out(type_, "x", name="exactly-32-characters-long-name0")[1]["name"] == "exactly-32-characters-long-name0"
    with pytest.raises(ValueError, match="33 characters"):
        _outputs(type_, "x", {"name": "a" * 33}, ACCOUNT, REGION, "aws")


def test_target_group_outputs() -> None:
    tg_id, tg = out("aws:lb/targetGroup:TargetGroup", name="orders-blue")
    assert re.fullmatch(rf"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/orders-blue/[0-9a-f]{{16}}",
                        tg["arn"])
    assert tg_id == tg["arn"] and tg["arnSuffix"] == tg["arn"].split(":", 5)[5]


def test_listener_and_rule_arns_extend_their_parents() -> None:
    _, lb = out("aws:lb/loadBalancer:LoadBalancer", name="front")
    listener_id, listener = out("aws:lb/listener:Listener", loadBalancerArn=lb["arn"])
    assert re.fullmatch(re.escape(lb["arn"].replace(":loadbalancer/", ":listener/")) + r"/[0-9a-f]{16}",
                        listener["arn"])
    assert listener_id == listener["arn"]
    _, rule = out("aws:lb/listenerRule:ListenerRule", listenerArn=listener["arn"])
    assert re.fullmatch(re.escape(listener["arn"].replace(":listener/", ":listener-rule/")) + r"/[0-9a-f]{16}",
                        rule["arn"])


def test_ecs_service_arn_takes_the_cluster_name_from_a_name_or_an_arn() -> None:
    expected = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/core/orders"
    cluster_arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/core"
    for cluster in ("core", cluster_arn):
        service_id, service = out("aws:ecs/service:Service", name="orders", cluster=cluster)
        assert service_id == service["arn"] == expected
    assert out("aws:ecs/service:Service", name="orders")[1]["arn"].endswith(":service/default/orders")


def test_task_definition_outputs() -> None:
    family_id, task = out("aws:ecs/taskDefinition:TaskDefinition", family="prod-orders")
    assert family_id == "prod-orders"
    assert task["arn"] == f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/prod-orders:1"
    assert task["arnWithoutRevision"] == f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/prod-orders"
    assert task["revision"] == 1


def test_codedeploy_outputs() -> None:
    _, app = out("aws:codedeploy/application:Application", name="crossdeploy-prod")
    assert app["arn"] == f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:application:crossdeploy-prod"
    assert re.fullmatch(UUID, app["applicationId"])
    group_id, group = out("aws:codedeploy/deploymentGroup:DeploymentGroup", appName="crossdeploy-prod",
                          deploymentGroupName="orders")
    assert group["arn"] == f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:deploymentgroup:crossdeploy-prod/orders"
    assert re.fullmatch(UUID, group["deploymentGroupId"]) and group_id == group["deploymentGroupId"]
    config_id, config = out("aws:codedeploy/deploymentConfig:DeploymentConfig", deploymentConfigName="canary-10")
    assert config_id == "canary-10"
    assert config["arn"] == f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:deploymentconfig:canary-10"


def test_alarm_and_scaling_outputs() -> None:
    alarm_id, alarm = out("aws:cloudwatch/metricAlarm:MetricAlarm", name="orders-5xx")
    assert alarm_id == alarm["name"] == "orders-5xx"
    assert alarm["arn"] == f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:orders-5xx"
    assert re.fullmatch(r"my-alarm-[0-9a-f]{7}", out("aws:cloudwatch/metricAlarm:MetricAlarm", "my-alarm")[1]["name"])
    target_id, target = out("aws:appautoscaling/target:Target", resourceId="service/core/orders",
                            serviceNamespace="ecs")
    assert target_id == "service/core/orders"
    assert target["arn"].startswith(f"arn:aws:application-autoscaling:{REGION}:{ACCOUNT}:scalable-target/")
    _, policy = out("aws:appautoscaling/policy:Policy", name="cpu", resourceId="service/core/orders",
                    serviceNamespace="ecs")
    assert re.fullmatch(rf"arn:aws:autoscaling:{REGION}:{ACCOUNT}:scalingPolicy:{UUID}:resource/ecs/service/core/"
                        r"orders:policyName/cpu", policy["arn"])


def mocks_with_provider(region: str) -> tuple[AwsMocks, str]:
    mocks = AwsMocks()
    provider_id, _ = mocks.new_resource(MockResourceArgs(
        PROVIDER_TYPE, "workload", {"allowedAccountIds": f'["{ACCOUNT}"]', "region": region}, custom=True))
    return mocks, f"urn:pulumi:test::crossdeploy::{PROVIDER_TYPE}::workload::{provider_id}"


def test_availability_zones_answer_for_the_providers_region() -> None:
    mocks, provider = mocks_with_provider("ap-southeast-2")
    result, failures = mocks.call(MockCallArgs(ZONES, {"state": "available"}, provider))
    assert failures == []
    assert result["names"] == ["ap-southeast-2a", "ap-southeast-2b", "ap-southeast-2c"]
    assert result["zoneIds"] == ["apse2-az1", "apse2-az2", "apse2-az3"]
    assert result["state"] == "available"
    [invoke] = mocks.run.invokes
    assert (invoke.token, invoke.account, invoke.region) == (ZONES, ACCOUNT, "ap-southeast-2")


def test_availability_zone_filters() -> None:
    mocks, provider = mocks_with_provider("us-east-2")
    opt_in = [{"name": "opt-in-status", "values": ["opt-in-not-required"]}]
    assert mocks.call(MockCallArgs(ZONES, {"filters": opt_in}, provider))[0]["names"] == [
        "us-east-2a", "us-east-2b", "us-east-2c"]
    only_opted = [{"name": "opt-in-status", "values": ["opted-in"]}]
    assert mocks.call(MockCallArgs(ZONES, {"filters": only_opted}, provider))[0]["names"] == []
    assert mocks.call(MockCallArgs(ZONES, {"excludeNames": ["us-east-2a"]}, provider))[0]["zoneIds"] == [
        "use2-az2", "use2-az3"]
    with pytest.raises(AssertionError, match="filter name"):
        mocks.call(MockCallArgs(ZONES, {"filters": [{"name": "zone-colour", "values": ["x"]}]}, provider))


def test_other_invokes_and_invokes_without_a_provider_still_fail() -> None:
    mocks, provider = mocks_with_provider("us-east-2")
    with pytest.raises(AssertionError, match="unexpected invoke aws:ec2/getVpc:getVpc"):
        mocks.call(MockCallArgs("aws:ec2/getVpc:getVpc", {}, provider))
    with pytest.raises(AssertionError, match="without an explicit provider"):
        mocks.call(MockCallArgs(ZONES, {}, ""))


PROBES: list[weakref.ref] = []
"""Weak references the probe program below leaves behind: to its stack and its one resource."""
PROBE_PROGRAM = f"""\
import sys
import weakref

import pulumi
import pulumi_aws as aws

provider = aws.Provider("p", region="{REGION}", allowed_account_ids=["{ACCOUNT}"])
topic = aws.sns.Topic("t", name="t", opts=pulumi.ResourceOptions(provider=provider))
sys.modules["{__name__}"].PROBES.extend([weakref.ref(pulumi.runtime.get_root_resource()), weakref.ref(topic)])
if pulumi.Config().get_bool("fail"):
    raise ValueError("the program failed")
"""


@pytest.fixture
def probe(tmp_path):
    program = tmp_path / "__main__.py"
    program.write_text(PROBE_PROGRAM)
    PROBES.clear()
    yield program
    PROBES.clear()
    gc.enable()


def test_a_run_releases_its_object_graph_and_restores_the_collector(probe) -> None:
    # The stack holds every resource, Output and task of the run; left to the next run it would be ~650 MB at 100
    # services. run_program releases it and collects it itself, with no gc.collect() here.
    assert gc.isenabled()
    run = run_program({"aws:region": REGION}, stack="test", program=probe)
    assert [r.name for r in run.custom()] == ["t"]
    assert len(PROBES) == 2 and all(ref() is None for ref in PROBES), "the run's stack or resource outlived it"
    assert gc.isenabled()

    gc.disable()  # a caller that paused the collector (bench_program.py --gc off) keeps it paused
    run_program({"aws:region": REGION}, stack="test", program=probe)
    assert not gc.isenabled()


def test_a_failing_run_restores_the_collector(probe) -> None:
    with pytest.raises(ValueError, match="the program failed"):
        run_program({"aws:region": REGION, "crossdeploy:fail": "true"}, stack="test", program=probe)
    assert gc.isenabled()
