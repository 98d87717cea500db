"""The release flow can be tried with what ships: examples/deployment.yaml and the README's example validate against
the prod stack's release context, the very file `python -m offline.plan prod --release-context` writes."""

from __future__ import annotations

import json
import re

from conftest import ROOT

from handlers import release_file
from offline import plan


def prod_context(prod_run) -> dict:
    text = plan.release_context(prod_run)
    assert text is not None, "Pulumi.prod.yaml has a release"
    return json.loads(text)


def test_the_shipped_example_validates_against_the_prod_stack(prod_run) -> None:
    text = (ROOT / "examples" / "deployment.yaml").read_text()
    assert release_file.validate(text, prod_context(prod_run), "examples/deployment.yaml") == []
    manifest = release_file.convert(text, prod_context(prod_run))
    # test is one region, prod two: orders 1 + payments 2 + storefront (us-east-2 only) 1; one task.
    assert (len(manifest["services"]), len(manifest["tasks"])) == (4, 1)


def test_the_readme_example_validates_against_the_prod_stack(prod_run) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Releases: `deployment.yaml`", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "the Releases section shows an example"
    assert release_file.validate(block.group(1), prod_context(prod_run), "README.md") == []
