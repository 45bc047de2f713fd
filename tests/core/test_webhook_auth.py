"""Which secret each webhook receiver accepts (core/webhook_auth.py receiver_secrets)."""

from __future__ import annotations

from dataclasses import fields

from core.settings import Settings
from core.webhook_auth import receiver_secrets

RECEIVERS = ("registry", "dockerhub", "harbor", "quay", "build", "github")


def test_each_receiver_has_its_own_secret_setting_and_it_is_secret() -> None:
    by_name = {f.name: f for f in fields(Settings)}
    for receiver in RECEIVERS:
        f = by_name[f"webhook_secret_{receiver}"]
        assert f.metadata.get("secret") is True and f.repr is False
    s = Settings(webhook_secret_quay="q-secret-value")
    assert "q-secret-value" not in repr(s)


def test_lookup_order() -> None:
    s = Settings(
        webhook_secret="default", webhook_secret_quay="quay-own", webhook_secret_github="gh-own",
        webhook_secrets="reg.example:5000=pinned, quay=quay-old, harbor=harbor-old",
    )
    assert receiver_secrets("quay", None, s) == ["quay-own"]  # its own setting beats WEBHOOK_SECRETS
    assert receiver_secrets("harbor", None, s) == ["harbor-old"]  # the older per-receiver form
    assert receiver_secrets("github", None, s) == ["gh-own"]
    assert receiver_secrets("dockerhub", None, s) == ["default"]
    assert receiver_secrets("quay", "reg.example:5000", s) == ["pinned"]  # a pinned host beats all
    assert receiver_secrets("registry", "REG.example:5000", s) == ["pinned"]
    assert receiver_secrets("registry", "other.example", s) == ["default"]
    assert receiver_secrets("build", None, Settings()) == []  # disabled


def test_one_receivers_secret_is_never_another_receivers() -> None:
    own = {r: f"{r}-secret" for r in RECEIVERS}
    s = Settings(webhook_secret="default", **{f"webhook_secret_{r}": v for r, v in own.items()})
    for receiver in RECEIVERS:
        assert receiver_secrets(receiver, None, s) == [own[receiver]]
