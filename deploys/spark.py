"""
A fresh DGX Spark to a verified vLLM service: preflight (DGX OS, aarch64, GB10 at compute
capability 12.1, driver branch, Docker with the NVIDIA runtime, the deploy user's Docker
access, free disk), every problem at once and nothing changed when any; then the model
through the lock, the patched image, the service and its checks. DGX OS's driver is never
touched.

    pyinfra inventories/spark.py deploys/spark.py
"""

from pyinfra import host

from rigkit import spark
from rigkit.hostdata import rig_for
from rigkit.interconnect import bring_up
from rigkit.models.deploy import models
from rigkit.serve import serve_all

config = rig_for(host)  # every component validated before any host changes
spark.preflight(config)
bring_up(config)  # configured, measured on every node, trusted: before anything else changes
placed = models(config)  # a Hub model's download runs on in the background from here
# What the engines build (llama.cpp's compile, an image) meanwhile; the downloads waited for;
# then the services, each verified.
serve_all(config, models=placed, address=host.data.get("ssh_hostname") or host.name)
