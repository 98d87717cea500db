"""crossdeploy's CrossGuard policy pack: `pulumi preview --policy-pack policy` (the pull-request workflow passes it).

The Pulumi CLI runs this file as __main__ with this directory as working directory and first on sys.path (so the
pack's modules import as top-level ones) and the interpreter of policy/venv (PulumiPolicy.yaml). The pack imports
nothing from the program: it judges what the program registers, whatever wrote it.
"""

from crossdeploy_policies import build_pack

if __name__ == "__main__":
    # Only when the engine runs the pack: building it starts the analyzer's server and blocks, which importing this
    # file (the tests do) must not.
    build_pack()
