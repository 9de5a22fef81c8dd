"""Bus signing keys for tests: generated per test, handed to services through their environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aigw_common.bus import BusAuth
from aigw_common.signing import PRODUCERS, Signer, Verifier, generate_keypair


@dataclass(frozen=True)
class BusKeys:
    private: dict[str, str]  # producer -> base64 private key
    public: dict[str, str]  # producer -> base64 public key

    @classmethod
    def generate(cls) -> BusKeys:
        pairs = {p: generate_keypair() for p in PRODUCERS}
        return cls({p: k[0] for p, k in pairs.items()}, {p: k[1] for p, k in pairs.items()})

    def verify_keys(self) -> str:
        return ",".join(f"{p}:{k}" for p, k in self.public.items())

    def env(self, *, signers: tuple[str, ...] = PRODUCERS) -> dict[str, str]:
        """``AIGW_BUS_VERIFY_KEYS`` and the signing keys of ``signers`` (all producers by default)."""
        out = {"AIGW_BUS_VERIFY_KEYS": self.verify_keys()}
        out.update({f"AIGW_{p.upper()}_SIGNING_KEY": self.private[p] for p in signers})
        return out

    def auth(self, *, signers: tuple[str, ...] = PRODUCERS) -> BusAuth:
        """A :class:`BusAuth` that verifies with these keys and may sign as ``signers``."""
        return BusAuth({p: Signer.from_b64(p, self.private[p]) for p in signers},
                       Verifier.from_pairs(self.public.items()))


def auth_from_env(env: Mapping[str, str]) -> BusAuth:
    """A test bus's :class:`BusAuth` from a service environment that holds every producer's signing key."""
    from aigw_common.settings import Settings

    return auth_for(Settings.from_env(env))


def auth_for(settings: object) -> BusAuth:
    """A test bus's :class:`BusAuth` from :class:`~aigw_common.settings.Settings` made by ``make_settings``
    (which hold every producer's signing key): it may sign as any producer and verifies like a service."""
    keys = getattr(settings, "signing_keys", {})
    return BusAuth({p: Signer.from_b64(p, k) for p, k in keys.items()},
                   Verifier.from_pairs(getattr(settings, "verify_keys", ())))


__all__ = ["BusKeys", "auth_for", "auth_from_env"]
