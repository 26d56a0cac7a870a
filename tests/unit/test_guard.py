import io
import zipfile

import pytest

from coordinator.study.runner import APP_DIR
from node.flower.guard import UntrustedAppError, verify_fab


def _fab(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


OURS = (APP_DIR / "pyproject.toml").read_text()


def test_our_bundle_passes():
    verify_fab(_fab({"pyproject.toml": OURS, ".info/CONTENT": "pyproject.toml,abc,1\n"}))


@pytest.mark.parametrize(
    "files,why",
    [
        ({"pyproject.toml": OURS, "node/flower/client_app.py": "evil"}, "carries files"),
        ({"pyproject.toml": OURS.replace("node.flower.client_app:app", "evil:app")}, "names ClientApp"),
        ({"pyproject.toml": OURS, "evil.py": ""}, "carries files"),
        ({"README.md": "x"}, "carries files"),
        ({"pyproject.toml": "not = [toml"}, "malformed"),
    ],
)
def test_bundles_with_code_or_other_components_are_refused(files, why):
    with pytest.raises(UntrustedAppError, match=why):
        verify_fab(_fab(files))


def test_not_a_zip_is_refused():
    with pytest.raises(UntrustedAppError, match="malformed"):
        verify_fab(b"definitely not a zip")
