"""A guarded ClientApp runtime: refuse app bundles that carry code or name other components.

Flower's ``--trusted-entities`` accepts only bundles signed through Flower's hosted platform, and
open-source Flower lets anyone who reaches the SuperLink submit a bundle. So the node's operator
puts this runtime first on the SuperNode's ``PATH`` under the name ``flwr-clientapp`` (the local
launcher does; see ``deploy/TRUST.md``). Before Flower installs a bundle, it checks that the
bundle is exactly what ReHealth Core ships: a ``pyproject.toml`` (and Flower's ``.info``
manifest) and nothing else — no Python — whose ClientApp component is the installed node app.
Anything else is refused before it is unpacked or imported; the message gets an error reply.
"""

from __future__ import annotations

import io
import logging
import sys
import tomllib
import zipfile

from shared.errors import QueryRefused

log = logging.getLogger("rehealth.node.guard")

ALLOWED_CLIENTAPP = "node.flower.client_app:app"
ALLOWED_FILES = {"pyproject.toml", ".info/CONTENT"}


class UntrustedAppError(QueryRefused):
    """The submitted app bundle is not the one this node runs."""


def verify_fab(content: bytes) -> None:
    """Raise :class:`UntrustedAppError` unless the bundle carries no code and names the
    installed node ClientApp."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as z:
            names = set(z.namelist())
            extra = sorted(names - ALLOWED_FILES)
            if extra:
                raise UntrustedAppError(f"app bundle carries files this node does not run: {extra[:5]}")
            pyproject = tomllib.loads(z.read("pyproject.toml").decode())
    except (zipfile.BadZipFile, KeyError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UntrustedAppError(f"app bundle is malformed: {e}") from None
    comp = pyproject.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    if comp.get("clientapp") != ALLOWED_CLIENTAPP:
        raise UntrustedAppError(
            f"app bundle names ClientApp {comp.get('clientapp')!r}; this node runs only {ALLOWED_CLIENTAPP!r}"
        )


def main() -> None:
    """``flwr-clientapp`` with the bundle check in front of Flower's own installer."""
    from flwr.supernode import cli
    from flwr.supernode.runtime import run_clientapp as rc

    from shared.flower_pull import configure_object_pull

    configure_object_pull()  # the message's objects may still be on their way to the SuperNode

    install = rc.install_from_fab

    def guarded_install(fab_file, *args, **kwargs):
        content = fab_file if isinstance(fab_file, bytes) else fab_file.read_bytes()
        try:
            verify_fab(content)
        except UntrustedAppError as e:
            log.error("refused app bundle: %s", e)
            print(f"rehealth guard: refused app bundle: {e}", file=sys.stderr, flush=True)
            raise
        return install(fab_file, *args, **kwargs)

    rc.install_from_fab = guarded_install
    cli.flwr_clientapp()
