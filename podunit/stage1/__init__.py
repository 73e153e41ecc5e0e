"""stage1: the helper systemd runs inside each pod unit.

Threat model: stage1 runs as root with every capability, on behalf of a
manifest and images that may be hostile. It is a security boundary: it must
build the container so that the app cannot reach host paths (every mount
target is resolved inside the container root), cannot keep capabilities
beyond its declared set (bounding set dropped, inheritable and ambient sets
cleared before exec), cannot gain privileges through setuid binaries unless
allowed (no_new_privs), and sees only the pod's namespaces. systemd applies
the resource limits and the device policy to the unit's cgroup; stage1 does
only what systemd cannot: overlay roots, namespaces shared between units,
and the hand-over of the main PID to the app.

It is a startup path: it imports only the standard library, the kernel
wrappers and the plan types, never the manifest parser or the image store.
"""
