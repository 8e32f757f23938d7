"""The Vagrant VM from the repository's Vagrantfile as a rig, reached through pyinfra's
@vagrant connector:

    vagrant up
    pyinfra inventories/vagrant.py deploys/rig.py

"@vagrant/rig" names the VM `config.vm.define "rig"` (the connector runs `vagrant status` /
`vagrant ssh-config` from the repository root and fills in ssh_hostname, ssh_user, ...).
Without GPU passthrough it is a CPU rig; with a passed-through GPU set RIGKIT_VAGRANT_GPU=1
(the CUDA architecture is read from nvidia-smi on the VM).
"""

import os

GPU = bool(os.environ.get("RIGKIT_VAGRANT_GPU"))
MODEL_DIR = "/srv/models/tiny-qwen"

rig = {
    "_sudo": True,
    "gpus": {"count": 1 if GPU else 0},
    "llama_cpp": {"ref": os.environ.get("RIGKIT_LLAMA_REF", "b8137"), "cuda": GPU},
    # A small GGUF of your own (e.g. qwen2.5-0.5b-instruct-q8_0.gguf) in ./models on this machine.
    "models": [{"upload": os.environ.get("RIGKIT_VAGRANT_MODEL_DIR", "models"), "dest": MODEL_DIR}],
    "services": [
        {
            "name": "small",
            "model": f"{MODEL_DIR}/{os.environ.get('RIGKIT_VAGRANT_MODEL', 'model.gguf')}",
            "ctx": 4096,
            "n_gpu_layers": 999 if GPU else 0,
        }
    ],
}

rigs = [("@vagrant/rig", rig)]
