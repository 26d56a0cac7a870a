import subprocess
import sys


def _run(*args):
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from coordinator.cli.root import main; "
            f"sys.argv = ['rehealth', *{list(args)!r}]; main()",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_every_group():
    out = _run("--help").stdout
    for group in ("demo", "node", "report", "study", "synth"):
        assert group in out


def test_a_named_group_loads_alone_and_works():
    cp = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from coordinator.cli.root import main; "
            "sys.argv = ['rehealth', 'report', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('PANDAS' if 'pandas' in sys.modules else 'LEAN')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "verify" in cp.stdout and cp.stdout.strip().endswith("LEAN"), cp.stdout + cp.stderr
