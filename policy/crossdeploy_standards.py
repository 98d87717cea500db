"""The standards crossdeploy's IAM documents are held to, shared by the policy pack and the tests.

This is the one place these lists live: the pack enforces them on every ``pulumi preview`` and ``pulumi up``, and
tests/test_least_privilege.py imports them from here. The Pulumi CLI runs the pack from this directory, so this
module imports nothing from the program (its ``components`` package is not on the pack's path).
"""

from __future__ import annotations

UNSCOPABLE: frozenset[str] = frozenset({
    # Actions for which the Service Authorization Reference lists no resource type: the only ones an Allow may grant
    # on Resource "*". Add an action here only with that reference's word for it; everything else names its ARNs.
    "codepipeline:PutJobFailureResult",
    "codepipeline:PutJobSuccessResult",
    "ec2:DescribeNetworkInterfaces",
    "ecr:GetAuthorizationToken",
    "ecs:DescribeTaskDefinition",
    "ecs:ListTasks",
    "ecs:RegisterTaskDefinition",
    "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:DescribeTargetGroups",
})
