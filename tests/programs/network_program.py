"""A minimal program around one Network, run by tests/test_network.py under the offline mocks.

Config (namespace ``crossdeploy``): ``account`` and ``region`` of the workload provider, and optionally ``cidr``,
``natGateways``, ``existing`` (an ``ExistingVpcConfig`` mapping), ``name`` (Name tag prefix) and ``tags``.
"""

import pulumi
import pulumi_aws as aws

from components.config import ExistingVpcConfig
from components.network import Network, NetworkArgs

cfg = pulumi.Config("crossdeploy")
account = cfg.require("account")
region = cfg.require("region")
existing = cfg.get_object("existing")

provider = aws.Provider(
    f"workload-{account}-{region}",
    region=region,
    allowed_account_ids=[account],
    default_tags=aws.ProviderDefaultTagsArgs(tags={"crossdeploy:stack": pulumi.get_stack()}),
)
network = Network("net", NetworkArgs(
    provider=provider,
    cidr=cfg.get("cidr") or "10.0.0.0/16",
    nat_gateways=cfg.get("natGateways") or "per-az",
    existing=ExistingVpcConfig.model_validate(existing) if existing is not None else None,
    name=cfg.get("name") or "",
    tags=cfg.get_object("tags") or {},
))

pulumi.export("vpcId", network.vpc_id)
pulumi.export("publicSubnetIds", network.public_subnet_ids)
pulumi.export("privateSubnetIds", network.private_subnet_ids)
pulumi.export("vpcCidr", network.vpc_cidr)
