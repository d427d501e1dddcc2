"""kubessh: the MPI remote-launch agent that runs commands in pods through the Kubernetes API."""
