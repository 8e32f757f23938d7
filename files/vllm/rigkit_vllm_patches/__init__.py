"""rigkit's patches to vLLM, as small stdlib modules the patched vLLM files call (so their
logic is tested without vLLM or a GPU), with the applier and the image's self-check.

Installed into an image by ``files/vllm/Dockerfile`` under /opt/rigkit/vllm (a ``.pth`` file
in vLLM's site-packages puts it on ``sys.path``)."""
