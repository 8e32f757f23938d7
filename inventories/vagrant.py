"""The Vagrant VM from the repository's Vagrantfile, reached through pyinfra's @vagrant connector.

`vagrant up` first, then run pyinfra from the repository root (the connector runs
`vagrant status` / `vagrant ssh-config` there and fills in ssh_hostname, ssh_port,
ssh_user and ssh_key).  "@vagrant/rig" names the VM `config.vm.define "rig"`.
"""

# Host data of a one-GPU rig, same shape as the other inventories' rigs; the keys are
# rigkit's host-data schema (defined with the deploys), filled in there.
rig: dict = {}

rigs = [("@vagrant/rig", rig)]
