"""What a running node knows about itself: its site, its data, its state folder.

Built from the SuperNode's ``--node-config`` (set by the node's operator, never by the
coordinator), e.g. ``site="insurer_a" data-path="/srv/rehealth/cohort.csv" state-dir="/var/lib/rehealth"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from shared.errors import QueryRefused, SpecError
from shared.protocol import StudyQuery


class NotInStudy(QueryRefused):
    """The query names sites and this node is not one of them: it declines, computing nothing."""


@dataclass(frozen=True)
class NodeRuntime:
    site: str
    data_path: Path | None = None
    state_dir: Path | None = None

    @classmethod
    def from_node_config(cls, cfg: Mapping) -> "NodeRuntime":
        site = str(cfg.get("site", "")).strip()
        if not site:
            raise SpecError('node config lacks site (e.g. --node-config \'site="insurer_a"\')')
        data = cfg.get("data-path")
        state = cfg.get("state-dir")
        return cls(site=site, data_path=Path(str(data)) if data else None,
                   state_dir=Path(str(state)) if state else None)

    def answer(self, query: StudyQuery):
        """Answer a validated study query from this node's own data."""
        from node.study_service import answer, load_site_arrays

        if query.sites and self.site not in query.sites:
            raise NotInStudy(f"site {self.site} is not among the study's sites")
        if self.data_path is None:
            raise QueryRefused(f"site {self.site} has no study data configured (data-path)")
        cache = self.state_dir / "cache" if self.state_dir else None
        data = load_site_arrays(self.data_path, query, cache)
        return answer(query, data)
