"""Which secret opens each operator webhook receiver, for which registry host
(core/webhook_auth.py operator_bindings)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from core.names import HUB_HOST
from core.settings import ConfigError, Settings
from core.webhook_auth import operator_bindings

RECEIVERS = ("registry", "dockerhub", "harbor", "quay", "build", "github")


def test_each_receiver_has_its_own_secret_setting_and_it_is_secret() -> None:
    by_name = {f.name: f for f in fields(Settings)}
    for receiver in RECEIVERS:
        f = by_name[f"webhook_secret_{receiver}"]
        assert f.metadata.get("secret") is True and f.repr is False
    s = Settings(webhook_secret_quay="q-secret-value")
    assert "q-secret-value" not in repr(s)


def test_every_secret_is_bound_to_one_host_per_receiver_and_the_lookup_order_holds() -> None:
    s = Settings(
        webhook_secret="default", webhook_secret_quay="quay-own", webhook_secret_github="gh-own",
        webhook_secrets="REG.example:5000=pinned, quay=quay-old, harbor=harbor-old, registry@docker.io=hub-reg,"
                        " build@ci.example=ci, registry@reg.example:5000=reg-own",
        tutum_registry_host="own.example",
    )
    b = operator_bindings(s)
    # defaults: Docker Hub, quay.io, ghcr.io; the distribution registry, Harbor, builds: the own registry
    assert b["quay"] == {"quay.io": "quay-own", "reg.example:5000": "pinned"}  # its own setting beats `quay=`
    assert b["harbor"] == {"own.example": "harbor-old", "reg.example:5000": "pinned"}  # the older per-receiver form
    assert b["github"] == {"ghcr.io": "gh-own", "reg.example:5000": "pinned"}
    assert b["dockerhub"] == {HUB_HOST: "default", "reg.example:5000": "pinned"}
    # `<receiver>@<host>` beats a host entry; Docker Hub's aliases are one host
    assert b["registry"] == {"own.example": "default", "reg.example:5000": "reg-own", HUB_HOST: "hub-reg"}
    assert b["build"] == {"own.example": "default", "reg.example:5000": "pinned", "ci.example": "ci"}


def test_receivers_without_a_host_are_closed() -> None:
    b = operator_bindings(Settings(webhook_secret="default"))  # no TUTUM_REGISTRY_HOST
    assert b["registry"] == b["harbor"] == b["build"] == {}
    assert b["dockerhub"] == {HUB_HOST: "default"}
    assert operator_bindings(Settings())["build"] == {}  # disabled


def test_one_receivers_secret_is_never_another_receivers() -> None:
    own = {r: f"{r}-secret" for r in RECEIVERS}
    s = Settings(webhook_secret="default", tutum_registry_host="own.example",
                 **{f"webhook_secret_{r}": v for r, v in own.items()})
    for receiver, bound in operator_bindings(s).items():
        assert list(bound.values()) == [own[receiver]]


@pytest.mark.parametrize("entry, words", [
    ("registy@reg.example=x", "'registy' is not a receiver"),
    ("registry@not a host=x", "not a valid host"),
    ("UPPER CASE=s3cr3t-value", "not a valid host"),
])
def test_a_malformed_entry_is_a_config_error_that_never_shows_the_secret(entry: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        operator_bindings(Settings(webhook_secrets=entry))
    assert "s3cr3t" not in str(caught.value) and "=x" not in str(caught.value)
