"""Lambda code packages built from this repository's ``handlers/`` files, byte for byte.

The code AWS runs is the code the tests run: every file goes in as a :class:`pulumi.FileAsset` of the repository
file itself (nothing is copied, rendered or minified), under ``handlers/`` so the entry point is
``handlers.<module>.handler``. Generated documents (a target map) go in next to them as :class:`pulumi.StringAsset`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pulumi

HANDLERS = Path(__file__).resolve().parents[1] / "handlers"
RUNTIME = "python3.12"
"""Lambda runtime of every crossdeploy function (the handlers use the standard library and boto3 only)."""


def handler_files(modules: Iterable[str] | None = None) -> dict[str, Path]:
    """Archive path -> repository file: the named ``handlers/`` files (``"deploy_engine.py"``), or all of them.

    A named file that does not exist is an error here, at preview, rather than an ImportError in Lambda."""
    if modules is None:
        paths = sorted(HANDLERS.glob("*.py"))
    else:
        paths = [HANDLERS / m for m in modules]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"handlers/: no such files {missing}")
    return {f"handlers/{path.name}": path for path in paths}


def handler_archive(modules: Iterable[str] | None = None,
                    documents: Mapping[str, str] | None = None) -> pulumi.AssetArchive:
    """The package: the handler files (see :func:`handler_files`) plus ``documents`` (archive path -> text)."""
    assets: dict[str, pulumi.Asset | pulumi.Archive] = {
        name: pulumi.FileAsset(str(path)) for name, path in handler_files(modules).items()}
    for name, text in (documents or {}).items():
        if name in assets:
            raise ValueError(f"{name}: a document may not replace a handler file")
        assets[name] = pulumi.StringAsset(text)
    return pulumi.AssetArchive(assets)
