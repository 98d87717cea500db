"""The only place AWS providers are created: one per (account, region) the stack uses.

Both stack files set ``pulumi:disable-default-providers: ["aws"]``, so a resource that forgot its provider fails at
preview instead of landing in whatever account the operator's shell happens to point at. Every provider pins
``allowed_account_ids`` to its own account for the same reason: credentials for the wrong account stop the run
before anything is created there.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.config import StackConfig
from components.policies import iam_name, role_arn


@dataclass(frozen=True)
class ProvidersArgs:
    config: StackConfig
    """The validated stack config: tools account and regions, every workload account, its regions and the role
    Pulumi assumes there (``provisionRoleName``)."""


class Providers(pulumi.ComponentResource):
    """Holds one ``aws.Provider`` per (account, region); look them up with :meth:`get`.

    Workload providers assume ``arn:aws:iam::<account>:role/<provisionRoleName>`` with a session name naming the
    project and stack, so CloudTrail in the workload account says which stack acted. The tools providers use the
    ambient credentials (the operator's or CI's role in the tools account).
    """

    def __init__(self, name: str, args: ProvidersArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("crossdeploy:providers:Providers", name, None, opts)
        cfg = args.config
        self.tools_account_id = cfg.tools_account_id
        self._providers: dict[tuple[str, str], aws.Provider] = {}
        tags = {"crossdeploy:project": cfg.project, "crossdeploy:stack": cfg.stack}
        session = iam_name(cfg.project, cfg.stack)

        for region in cfg.regions:
            self._add(name, cfg.tools_account_id, region, None, tags, session)
        for account, env in cfg.workload_accounts.items():
            assume = role_arn(cfg.partition, account, env.provision_role_name)
            for region in cfg.account_regions(account):
                self._add(name, account, region, assume, tags, session)
        self.register_outputs({})

    def _add(self, name: str, account: str, region: str, assume: str | None, tags: dict, session: str) -> None:
        self._providers[(account, region)] = aws.Provider(
            f"{name}-{account}-{region}",
            region=region,
            allowed_account_ids=[account],
            # Typed args, not a dict: a snake_case dict is JSON-encoded as is and the provider ignores role_arn.
            assume_roles=[aws.ProviderAssumeRoleArgs(role_arn=assume, session_name=session)] if assume else None,
            default_tags=aws.ProviderDefaultTagsArgs(tags=tags),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def get(self, account: str, region: str) -> aws.Provider:
        try:
            return self._providers[(account, region)]
        except KeyError:
            msg = f"no provider for account {account} in {region}; add the region to the stack config"
            raise KeyError(msg) from None

    def tools(self, region: str) -> aws.Provider:
        return self.get(self.tools_account_id, region)
