"""Pod networking through CNI plugins (the CNI spec 1.0, as libcni implements it).

podunit is the CNI *runtime*: it finds a network configuration list, runs
the plugins it names with the pod's pinned network namespace, and keeps the
result so that DEL and CHECK get exactly what ADD used. The plugins are the
standard ones (Debian's containernetworking-plugins); nothing stays resident.

    conflist.py  finding and reading `.conflist` files, the built-in default
    plugin.py    running one plugin binary: environment, stdin, errors
    chain.py     ADD / DEL / CHECK over a whole list, with rollback
    cache.py     the per-pod record under RUNTIME/cni/
    pod.py       what stage1 and the lifecycle call: attach, detach, check, gc

This package is imported lazily (only for pods on a CNI network), because
stage1 runs on every pod start.
"""
