"""What chatd's handlers use, filled in once the app's connections are up (cleanup_ctx)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aigw_common.auth import IdentityCache
from aigw_common.crypto import Sealer
from aigw_common.settings import Settings

from .config import ChatdConfig
from .hub import ChatHub
from .providers import ProviderDirectory
from .runner import TurnRunner
from .skills import SkillStore
from .store import Store


@dataclass(eq=False)
class Deps:
    settings: Settings
    config: ChatdConfig
    replica_id: str
    store: Store = field(init=False)
    skills: SkillStore = field(init=False)
    hub: ChatHub = field(init=False)
    runner: TurnRunner = field(init=False)
    directory: ProviderDirectory = field(init=False)
    identities: IdentityCache = field(init=False)
    at_rest: Sealer = field(init=False)

    def __repr__(self) -> str:
        return f"Deps(replica_id={self.replica_id!r})"
