"""Trust boundaries of the model and package supply (issue 20): where model files may go,
what a lock entry may say, and which URLs keyrings, GPG keys and Hub tokens travel over.
Each check: hostile values refused cleanly (host, key, expected), real-world values accepted."""

from __future__ import annotations

import pytest

from rigkit.hostdata import HostDataError, HubModel, UploadModel, parse_rig
from rigkit.hostdata.schema import MODEL_ROOTS

HUB_REPO = "acme/tiny-GGUF"


def refused(data: dict, key: str, expected: str, host: str = "rig-7") -> HostDataError:
    """``data`` refused by parse_rig, naming ``host`` and ``key``, ``expected`` in the message."""
    with pytest.raises(HostDataError) as err:
        parse_rig(host, data)
    assert (err.value.host, err.value.key) == (host, key), str(err.value)
    assert expected in err.value.expected, str(err.value)
    return err.value


# --- models[].dest under the model roots ----------------------------------------------------


def hub(dest: str, **more) -> dict:
    return {"models": [{"name": "m", "repo": HUB_REPO, "dest": dest, **more}]}


def upload(dest: str) -> dict:
    return {"models": [{"upload": "/tmp/local-models", "dest": dest}]}


@pytest.mark.parametrize("models", [hub, upload])
@pytest.mark.parametrize(
    "dest",
    [
        "/etc",
        "/etc/cron.d",
        "/var/run",
        "/run/docker",
        "/usr/local/models",
        "/opt/rigkit",
        "/var/lib/rigkit/models",
        "/tmp/m",  # not a model root
        "/srv",  # holds the root, is none
        "/srv/models-evil",  # a prefix of a root's name is not the root
        "/srv/models/../../etc",
        "/srv/models/m\n",
        "/srv/models/$(id)",
        "/ｅtc",  # a look-alike is no root either
    ],
)
def test_system_and_foreign_dests_refused(models, dest):
    refused(models(dest), "models[0].dest", "")


@pytest.mark.parametrize("models", [hub, upload])
def test_dests_under_the_default_roots_accepted(models):
    for root in MODEL_ROOTS:
        rig = parse_rig("h", models(f"{root}/tiny"))
        assert rig.models[0].dest == f"{root}/tiny"
        assert rig.model_roots == MODEL_ROOTS


def test_a_home_directory_named_in_model_roots_is_accepted():
    data = {**hub("/home/ml/models/tiny"), "model_roots": ["/home/ml/models"]}
    rig = parse_rig("h", data)
    assert isinstance(rig.models[0], HubModel) and rig.models[0].dest == "/home/ml/models/tiny"
    assert rig.model_roots == ("/home/ml/models",)
    # Naming roots replaces the defaults: /srv/models is then no root of this host.
    refused({**hub("/srv/models/tiny"), "model_roots": ["/home/ml/models"]}, "models[0].dest", "/home/ml/models")
    assert isinstance(
        parse_rig("h", {**upload("/home/ml/models/up"), "model_roots": ["/home/ml"]}).models[0], UploadModel
    )


@pytest.mark.parametrize(
    "roots, key",
    [
        (["/etc"], "model_roots[0]"),
        (["/"], "model_roots[0]"),
        (["/var"], "model_roots[0]"),  # holds /var/run and /var/lib/rigkit
        (["/srv/models", "/usr/share"], "model_roots[1]"),
        (["relative"], "model_roots[0]"),
        (["/home/ml/../../etc"], "model_roots[0]"),
        (["/home/ml\n"], "model_roots[0]"),
        ("/home/ml", "model_roots"),
        ([], "model_roots"),
    ],
)
def test_bad_model_roots_refused(roots, key):
    refused({**hub("/srv/models/m"), "model_roots": roots}, key, "")
