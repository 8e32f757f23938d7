"""
The Ray cluster of the inventory's hosts (host data ``cluster``): validated across hosts,
then each node's Ray role unit; the head checks that every node joined.

    pyinfra inventories/INVENTORY.py deploys/ray_cluster.py
"""

from rigkit.cluster import ray_cluster

ray_cluster()
