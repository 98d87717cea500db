"""CodeDeploy blue/green for ECS, the workload-account side: application, deployment configuration, deployment
group and the 5xx alarm that rolls a bad release back.

Two components, so that what exists once per environment and region is not repeated per service:

* :class:`BlueGreenApplication` (one per blue/green environment x region): the CodeDeploy application
  (``compute_platform="ECS"``) and, only when the environment's traffic shift matches none of CodeDeploy's
  predefined ECS configurations, a custom deployment configuration under the name
  :func:`components.naming.deployment_config_name` gives it (CodeDeploy configurations are regional, so each region
  gets its own, all under that one name).
* :class:`BlueGreenDeployment` (one per service x environment x region): the deployment group and its alarm.

What CodeDeploy owns once the deployment group exists (the workload component puts these in ``ignore_changes``,
or the next ``pulumi up`` would undo a release, or move production traffic back to the idle target group):

* the **forward actions of the prod and test listeners**, the default action and every listener rule that forwards
  to one of the pair: each deployment moves them from the group that served to the one the new task set registered
  with. CodeDeploy writes a weighted forward (new group 100, old group 0), not the single ``target_group_arn``
  Pulumi created the listener or rule with, so ignore the whole action (``default_actions`` / ``actions``);
* the **ECS service's task definition, load balancers, network configuration and platform version**: with
  ``deployment_controller`` ``CODE_DEPLOY``, ``UpdateService`` may change only the desired count, deployment
  configuration, health check grace period, placement and tag propagation; everything else changes through a
  CodeDeploy deployment (a new task set per release, the old one removed after the termination wait). The
  service reports the target group of its current primary task set, which alternates between the two.

Defaults and why:

* ``deployment_ready_option`` ``CONTINUE_DEPLOYMENT``: traffic shifts as soon as the new task set is healthy. The
  humans' gate is the pipeline's approval stage *before* the deploy action; a second, manual "reroute traffic"
  click inside CodeDeploy would stall pipelines with nobody watching.
* ``termination_wait_minutes`` 5: the old (blue) task set keeps running that long after the shift, so a rollback
  in that window is a listener flip, not a cold start. Longer costs a full second copy of the service; CodeDeploy
  accepts 0 to 2880 (two days) for ECS.
* rollback on ``DEPLOYMENT_FAILURE`` and ``DEPLOYMENT_STOP_ON_ALARM``: a failed deployment or a firing alarm puts
  the old task set back behind the prod listener automatically. No ``DEPLOYMENT_STOP_ON_REQUEST``: whoever stops a
  deployment by hand chooses whether it rolls back (``StopDeployment``'s ``autoRollbackEnabled``).
* the alarm: target 5xx responses (``AWS/ApplicationELB`` ``HTTPCode_Target_5XX_Count``, ``Sum`` per 60 s) of
  **both** target groups added up with metric math. The groups swap roles on every deployment (blue serves, green
  receives the new tasks, then the other way round), so an alarm on one group would watch the idle one half the
  time. Each group's count is ``FILL(..., 0)``-ed before adding: ALB publishes a count only for minutes with a
  non-zero value, and plain ``a + b`` has no value at a minute where either side has none, which would hide a
  burst of errors on one group behind a quiet other group. ``treat_missing_data`` ``notBreaching``: a minute
  without traffic is not a failure. Threshold 10 per minute for 2 consecutive minutes: one stray error (a client
  disconnect, a single bad request) is not a rollback; a real regression at any traffic worth protecting is.
  ``GreaterThanOrEqualToThreshold``, so ``threshold`` reads "this many or more fails".
* ``ignore_poll_alarm_failure`` false: if CodeDeploy cannot read the alarm it stops the deployment rather than
  shifting traffic unwatched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
from pulumi_aws import codedeploy as cd

from components.naming import PREDEFINED_ECS_CONFIGS, default_alarm_name

COMPUTE_PLATFORM = "ECS"
MAX_CODEDEPLOY_NAME = 100  # application, deployment group and deployment configuration names (CodeDeploy API)
MAX_ALARM_NAME = 255  # CloudWatch PutMetricAlarm AlarmName
MAX_TERMINATION_WAIT_MINUTES = 2880  # CodeDeploy, ECS: the original task set is kept at most two days
PREDEFINED_PREFIX = "CodeDeployDefault."
ROLLBACK_EVENTS = ("DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM")
TARGET_5XX_METRIC = "HTTPCode_Target_5XX_Count"
UNHEALTHY_HOSTS_METRIC = "UnHealthyHostCount"
ALB_NAMESPACE = "AWS/ApplicationELB"
ALARM_PERIOD_SECONDS = 60
_ROUTING_TYPES = {"canary": ("TimeBasedCanary", "time_based_canary"),
                  "linear": ("TimeBasedLinear", "time_based_linear")}


def _too_long(label: str, value: object, limit: int) -> list[str]:
    """A problem if ``value`` is a plain string outside 1..limit characters (Outputs are checked by AWS)."""
    if isinstance(value, str) and not 1 <= len(value) <= limit:
        return [f"{label}: must be 1 to {limit} characters, got {len(value)} ({value!r})"]
    return []


@dataclass(frozen=True)
class BlueGreenApplicationArgs:
    provider: aws.Provider
    """The workload account's provider in one region (CodeDeploy applications and configurations are regional)."""
    application_name: str
    """:func:`components.naming.codedeploy_application_name`."""
    deployment_config_name: str
    """:func:`components.naming.deployment_config_name`: a predefined ``CodeDeployDefault.ECS*`` name, or the name
    of the custom configuration this component creates."""
    traffic_shift: tuple[str, int | None, int | None]
    """:func:`components.naming.traffic_shift`: (``all-at-once`` | ``canary`` | ``linear``, percent, minutes)."""
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = [*_too_long("application_name", self.application_name, MAX_CODEDEPLOY_NAME),
                    *_too_long("deployment_config_name", self.deployment_config_name, MAX_CODEDEPLOY_NAME)]
        kind, percent, minutes = (*self.traffic_shift, None, None, None)[:3]
        if len(self.traffic_shift) != 3 or kind not in ("all-at-once", *_ROUTING_TYPES):
            problems.append(f"traffic_shift: expected (all-at-once|canary|linear, percent, minutes), got "
                            f"{self.traffic_shift!r}")
        elif kind == "all-at-once":
            if (percent, minutes) != (None, None):
                problems.append(f"traffic_shift: all-at-once takes no percent or minutes, got {self.traffic_shift!r}")
        else:
            if not isinstance(percent, int) or not 1 <= percent <= 99:
                problems.append(f"traffic_shift: {kind} percent must be 1 to 99, got {percent!r}")
            if not isinstance(minutes, int) or not 1 <= minutes <= 2880:
                problems.append(f"traffic_shift: {kind} minutes must be 1 to 2880, got {minutes!r}")
        predefined = PREDEFINED_ECS_CONFIGS.get((kind, percent, minutes))
        if self.is_predefined and self.deployment_config_name != predefined:
            problems.append(f"deployment_config_name: {self.deployment_config_name!r} is a predefined CodeDeploy "
                            f"configuration but traffic_shift {self.traffic_shift!r} "
                            + (f"is {predefined!r}" if predefined else "matches no predefined one"))
        elif not self.is_predefined:
            if self.deployment_config_name.startswith(PREDEFINED_PREFIX):
                problems.append(f"deployment_config_name: {self.deployment_config_name!r} is not one of CodeDeploy's "
                                f"predefined ECS configurations, and the {PREDEFINED_PREFIX!r} prefix is reserved "
                                "for them")
            if predefined:
                problems.append(f"deployment_config_name: traffic_shift {self.traffic_shift!r} is CodeDeploy's "
                                f"predefined {predefined!r}; use that name instead of a custom configuration")
        if problems:
            raise ValueError("BlueGreenApplicationArgs: " + "; ".join(problems))

    @property
    def is_predefined(self) -> bool:
        return self.deployment_config_name in PREDEFINED_ECS_CONFIGS.values()


def traffic_routing_config(traffic_shift: tuple[str, int | None, int | None]) -> dict:
    """The custom deployment configuration's ``traffic_routing_config`` for a canary or linear shift."""
    kind, percent, minutes = traffic_shift
    routing_type, block = _ROUTING_TYPES[kind]
    return {"type": routing_type, block: {"percentage": percent, "interval": minutes}}


class BlueGreenApplication(pulumi.ComponentResource):
    """The CodeDeploy application of one blue/green environment in one region, and its custom deployment
    configuration when the traffic shift needs one."""

    def __init__(self, name: str, args: BlueGreenApplicationArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:blue_green:BlueGreenApplication", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        application = aws.codedeploy.Application(
            f"{name}-application",
            name=args.application_name,
            compute_platform=COMPUTE_PLATFORM,
            tags=dict(args.tags) or None,
            opts=child,
        )
        self.application_name: pulumi.Output[str] = application.name
        self.deployment_config: aws.codedeploy.DeploymentConfig | None = None
        if args.is_predefined:
            self.deployment_config_name: pulumi.Output[str] = pulumi.Output.from_input(args.deployment_config_name)
        else:
            # CodeDeploy has no UpdateDeploymentConfig: any change replaces it. The name encodes the shift (kind,
            # percent, minutes), so a new shift is a new name and Pulumi creates it, repoints the deployment
            # groups, then deletes the old one (CodeDeploy refuses to delete a configuration still in use).
            self.deployment_config = aws.codedeploy.DeploymentConfig(
                f"{name}-config",
                deployment_config_name=args.deployment_config_name,
                compute_platform=COMPUTE_PLATFORM,
                traffic_routing_config=traffic_routing_config(args.traffic_shift),
                opts=child,
            )
            self.deployment_config_name = self.deployment_config.deployment_config_name
        self.register_outputs({
            "applicationName": self.application_name,
            "deploymentConfigName": self.deployment_config_name,
        })


@dataclass(frozen=True)
class BlueGreenDeploymentArgs:
    provider: aws.Provider
    """The workload account's provider in the region of the service."""
    application_name: pulumi.Input[str]
    """:attr:`BlueGreenApplication.application_name`."""
    deployment_group_name: str
    """:func:`components.naming.deployment_group_name`."""
    deployment_config_name: pulumi.Input[str]
    """:attr:`BlueGreenApplication.deployment_config_name` (an Output: the group waits for a custom config)."""
    service_role_arn: pulumi.Input[str]
    """The account's CodeDeploy service role (``AWSCodeDeployRoleForECS``), created elsewhere."""
    cluster_name: pulumi.Input[str]
    service_name: pulumi.Input[str]
    """The ECS service, created with ``deployment_controller`` ``CODE_DEPLOY``."""
    target_group_names: tuple[pulumi.Input[str], pulumi.Input[str]]
    """(blue, green): the group the service starts on, then the one CodeDeploy registers new task sets with."""
    target_group_arn_suffixes: tuple[pulumi.Input[str], pulumi.Input[str]]
    """The same two groups' ``arn_suffix`` (``targetgroup/<name>/<id>``), in the same order: the alarm's
    ``TargetGroup`` dimension."""
    load_balancer_arn_suffix: pulumi.Input[str]
    """``app/<name>/<id>``: the alarm's ``LoadBalancer`` dimension (ALB publishes per-target-group metrics with
    both dimensions)."""
    prod_listener_arns: tuple[pulumi.Input[str], ...]
    """The listener that serves production traffic. Exactly one: CodeDeploy's ``TrafficRoute.listenerArns`` takes
    at most one ARN (with HTTPS, the 443 listener; the port-80 redirect listener forwards nowhere)."""
    test_listener_arns: tuple[pulumi.Input[str], ...]
    """The test listener that reaches the new task set before production traffic does. Exactly one, as above."""
    termination_wait_minutes: int = 5
    """Minutes the old task set keeps running after a successful shift (0-2880). Default 5."""
    alarm_threshold: int = 10
    """Target 5xx responses per minute, both target groups together, that count as failing. Default 10."""
    alarm_evaluation_periods: int = 2
    """Consecutive failing minutes before the alarm fires and CodeDeploy rolls back. Default 2."""
    alarm_name: str = ""
    """Default ``<application>-<deployment group>-target-5xx``: alarm names are unique per account and region,
    and two environments may share both (each with a service of the same name)."""
    alarm_topic_arn: pulumi.Input[str] | None = None
    """SNS topic told when the alarm fires (its policy must let CloudWatch publish). Default: none, CodeDeploy's
    rollback is the action."""
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = [
            *_too_long("application_name", self.application_name, MAX_CODEDEPLOY_NAME),
            *_too_long("deployment_group_name", self.deployment_group_name, MAX_CODEDEPLOY_NAME),
            *_too_long("deployment_config_name", self.deployment_config_name, MAX_CODEDEPLOY_NAME),
        ]
        if self.alarm_name:
            problems.extend(_too_long("alarm_name", self.alarm_name, MAX_ALARM_NAME))
        if not 0 <= self.termination_wait_minutes <= MAX_TERMINATION_WAIT_MINUTES:
            problems.append(f"termination_wait_minutes: CodeDeploy accepts 0 to {MAX_TERMINATION_WAIT_MINUTES} for "
                            f"ECS, got {self.termination_wait_minutes}")
        if self.alarm_threshold < 1:
            problems.append(f"alarm_threshold: must be at least 1 (0 would fire on every minute), got "
                            f"{self.alarm_threshold}")
        if self.alarm_evaluation_periods < 1:
            problems.append(f"alarm_evaluation_periods: must be at least 1, got {self.alarm_evaluation_periods}")
        for label, pair in (("target_group_names", self.target_group_names),
                            ("target_group_arn_suffixes", self.target_group_arn_suffixes)):
            if len(pair) != 2:
                problems.append(f"{label}: exactly two (blue, green), got {len(pair)}")
            elif pair[0] is pair[1] or (isinstance(pair[0], str) and pair[0] == pair[1]):
                problems.append(f"{label}: blue and green must be two different target groups, got {pair[0]!r} twice")
        for label, listeners in (("prod_listener_arns", self.prod_listener_arns),
                                 ("test_listener_arns", self.test_listener_arns)):
            if len(listeners) != 1:
                problems.append(f"{label}: exactly one listener (CodeDeploy routes each kind of traffic through "
                                f"one listener), got {len(listeners)}")
        shared = [a for a in self.prod_listener_arns if isinstance(a, str) and a in self.test_listener_arns]
        if shared:
            problems.append(f"test_listener_arns: {shared[0]!r} is also the prod listener; test traffic needs its own")
        if problems:
            raise ValueError("BlueGreenDeploymentArgs: " + "; ".join(problems))


def _summed_queries(load_balancer_arn_suffix: pulumi.Input[str],
                    target_group_arn_suffixes: tuple[pulumi.Input[str], ...], metric_name: str, stat: str,
                    result_id: str, label: str) -> list:
    """Metric math over target groups: each group's `metric_name` per minute (missing minutes as 0), added up; only
    the sum is returned. ALB publishes per-target-group metrics with both the LoadBalancer and TargetGroup
    dimensions, and only for minutes it has a value for: plain ``a + b`` has no value where either side has none,
    which would hide one group's trouble behind a quiet (or empty) other group."""
    queries: list = []
    for i, suffix in enumerate(target_group_arn_suffixes, start=1):
        queries.append(aws.cloudwatch.MetricAlarmMetricQueryArgs(
            id=f"tg{i}",
            return_data=False,
            metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
                namespace=ALB_NAMESPACE,
                metric_name=metric_name,
                stat=stat,
                period=ALARM_PERIOD_SECONDS,
                dimensions={"LoadBalancer": load_balancer_arn_suffix, "TargetGroup": suffix},
            ),
        ))
    expression = " + ".join(f"FILL({q.id}, 0)" for q in queries)
    queries.append(aws.cloudwatch.MetricAlarmMetricQueryArgs(
        id=result_id, expression=expression, return_data=True,
        label=label + (", both target groups" if len(target_group_arn_suffixes) == 2 else "")))
    return queries


def target_5xx_queries(load_balancer_arn_suffix: pulumi.Input[str],
                       target_group_arn_suffixes: tuple[pulumi.Input[str], ...]) -> list:
    """Metric math: each target group's 5xx count (``Sum`` per minute), added up. Two groups for blue/green
    (CodeDeploy or ECS-native), one for a rolling service."""
    return _summed_queries(load_balancer_arn_suffix, target_group_arn_suffixes, TARGET_5XX_METRIC, "Sum",
                           "target5xx", "Target 5xx responses")


def unhealthy_targets_queries(load_balancer_arn_suffix: pulumi.Input[str],
                              target_group_arn_suffixes: tuple[pulumi.Input[str], ...]) -> list:
    """Metric math: each target group's unhealthy targets (``Maximum`` per minute: one failing check in the minute
    counts, where an average would dilute it), added up over the service's groups, whichever serves."""
    return _summed_queries(load_balancer_arn_suffix, target_group_arn_suffixes, UNHEALTHY_HOSTS_METRIC, "Maximum",
                           "unhealthy", "Unhealthy targets")


class BlueGreenDeployment(pulumi.ComponentResource):
    """The CodeDeploy deployment group of one ECS service in one environment and region, and its 5xx alarm."""

    def __init__(self, name: str, args: BlueGreenDeploymentArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:blue_green:BlueGreenDeployment", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        alarm_name: pulumi.Input[str] = args.alarm_name or pulumi.Output.from_input(args.application_name).apply(
            lambda application: default_alarm_name(application, args.deployment_group_name))
        alarm = aws.cloudwatch.MetricAlarm(
            f"{name}-target-5xx",
            name=alarm_name,
            alarm_description=pulumi.Output.concat(
                "crossdeploy: target 5xx responses of ", args.service_name, " (both blue/green target groups); ",
                "CodeDeploy stops and rolls back a deployment while this alarm is in ALARM"),
            metric_queries=target_5xx_queries(args.load_balancer_arn_suffix, args.target_group_arn_suffixes),
            comparison_operator="GreaterThanOrEqualToThreshold",
            threshold=args.alarm_threshold,
            evaluation_periods=args.alarm_evaluation_periods,
            treat_missing_data="notBreaching",
            alarm_actions=[args.alarm_topic_arn] if args.alarm_topic_arn is not None else None,
            tags=dict(args.tags) or None,
            opts=child,
        )
        blue, green = args.target_group_names
        group = aws.codedeploy.DeploymentGroup(
            f"{name}-group",
            app_name=args.application_name,
            deployment_group_name=args.deployment_group_name,
            deployment_config_name=args.deployment_config_name,
            service_role_arn=args.service_role_arn,
            deployment_style=cd.DeploymentGroupDeploymentStyleArgs(
                deployment_type="BLUE_GREEN", deployment_option="WITH_TRAFFIC_CONTROL"),
            ecs_service=cd.DeploymentGroupEcsServiceArgs(
                cluster_name=args.cluster_name, service_name=args.service_name),
            load_balancer_info=cd.DeploymentGroupLoadBalancerInfoArgs(
                target_group_pair_info=cd.DeploymentGroupLoadBalancerInfoTargetGroupPairInfoArgs(
                    target_groups=[
                        cd.DeploymentGroupLoadBalancerInfoTargetGroupPairInfoTargetGroupArgs(name=blue),
                        cd.DeploymentGroupLoadBalancerInfoTargetGroupPairInfoTargetGroupArgs(name=green),
                    ],
                    prod_traffic_route=cd.DeploymentGroupLoadBalancerInfoTargetGroupPairInfoProdTrafficRouteArgs(
                        listener_arns=list(args.prod_listener_arns)),
                    test_traffic_route=cd.DeploymentGroupLoadBalancerInfoTargetGroupPairInfoTestTrafficRouteArgs(
                        listener_arns=list(args.test_listener_arns)),
                ),
            ),
            blue_green_deployment_config=cd.DeploymentGroupBlueGreenDeploymentConfigArgs(
                deployment_ready_option=cd.DeploymentGroupBlueGreenDeploymentConfigDeploymentReadyOptionArgs(
                    action_on_timeout="CONTINUE_DEPLOYMENT"),
                terminate_blue_instances_on_deployment_success=(
                    cd.DeploymentGroupBlueGreenDeploymentConfigTerminateBlueInstancesOnDeploymentSuccessArgs(
                        action="TERMINATE", termination_wait_time_in_minutes=args.termination_wait_minutes)),
            ),
            auto_rollback_configuration=cd.DeploymentGroupAutoRollbackConfigurationArgs(
                enabled=True, events=list(ROLLBACK_EVENTS)),
            alarm_configuration=cd.DeploymentGroupAlarmConfigurationArgs(
                enabled=True, alarms=[alarm.name], ignore_poll_alarm_failure=False),
            tags=dict(args.tags) or None,
            opts=child,
        )
        self.deployment_group_name: pulumi.Output[str] = group.deployment_group_name
        self.deployment_group_arn: pulumi.Output[str] = group.arn
        self.alarm_name: pulumi.Output[str] = alarm.name
        self.alarm_arn: pulumi.Output[str] = alarm.arn
        self.register_outputs({
            "deploymentGroupName": self.deployment_group_name,
            "deploymentGroupArn": self.deployment_group_arn,
            "alarmName": self.alarm_name,
        })
