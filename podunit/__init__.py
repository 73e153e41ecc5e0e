"""podunit: Kubernetes v1 Pod manifests compiled into systemd units, no daemon."""

__version__ = "0.1.0"
