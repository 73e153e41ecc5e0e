"""Kubernetes `v1 Pod` manifests (YAML) into the frozen dataclasses of podunit.spec.

This is the only place a manifest is read. It is strict: unknown fields,
fields podunit does not implement, wrong types and invalid values are all
errors, located by file, line and field path, and every problem in a file is
reported at once in a single ManifestError.

The YAML is composed into nodes, not constructed into Python objects, so each
value keeps its line number and duplicate keys can be told apart.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
from dataclasses import dataclass, field
from fractions import Fraction

import yaml

from podunit import spec
from podunit._manifest_fields import (
    NULL,
    SEQ,
    Check,
    Fields,
    Node,
    Schema,
    TooComplex,
    Walker,
    absolute_path,
    capability,
    dns_label,
    dns_subdomain,
    env_name,
    label_value,
    line_of,
    pod_name,
    port_name,
    qualified_name,
    schema,
)
from podunit.errors import FieldError, ManifestError
from podunit.images.reference import ReferenceError, parse_reference
from podunit.quantity import to_bytes, to_millicores

__all__ = ["MAX_MANIFEST_BYTES", "load_pods", "parse_pods"]

MAX_MANIFEST_BYTES = 1 << 20
MAX_ANNOTATIONS_BYTES = 256 << 10
# libyaml's composer recurses in C and crashes on deeply nested input; real
# pods need about ten levels.
MAX_NESTING = 100
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TOP = Schema(
    frozenset({"apiVersion", "kind", "metadata", "spec"}),
    {"status": "must not be set in a manifest"},
)
_METADATA = schema(
    "name namespace labels annotations",
    "generateName uid resourceVersion generation creationTimestamp deletionTimestamp"
    " deletionGracePeriodSeconds ownerReferences finalizers managedFields selfLink",
)
_SPEC = schema(
    "containers initContainers volumes restartPolicy hostNetwork hostPID hostIPC"
    " shareProcessNamespace hostname terminationGracePeriodSeconds securityContext"
    " hostAliases dnsPolicy dnsConfig",
    "activeDeadlineSeconds affinity automountServiceAccountToken"
    " enableServiceLinks ephemeralContainers hostUsers imagePullSecrets nodeName"
    " nodeSelector os overhead preemptionPolicy priority priorityClassName readinessGates"
    " resourceClaims runtimeClassName schedulerName schedulingGates serviceAccount"
    " serviceAccountName setHostnameAsFQDN subdomain tolerations topologySpreadConstraints",
)
_POD_SECURITY = schema(
    "runAsUser runAsGroup runAsNonRoot",
    "appArmorProfile fsGroup fsGroupChangePolicy seccompProfile seLinuxChangePolicy"
    " seLinuxOptions supplementalGroups supplementalGroupsPolicy sysctls windowsOptions",
)
_CONTAINER = schema(
    "name image imagePullPolicy command args workingDir env ports volumeMounts resources"
    " securityContext",
    "envFrom lifecycle livenessProbe readinessProbe resizePolicy restartPolicy startupProbe"
    " stdin stdinOnce terminationMessagePath terminationMessagePolicy tty volumeDevices",
)
_ENV = schema("name value", "valueFrom")
_PORT = schema("containerPort hostPort name protocol hostIP")
_MOUNT = schema("name mountPath readOnly subPath mountPropagation", "recursiveReadOnly subPathExpr")
_RESOURCES = schema("limits requests", "claims")
_QUANTITIES = Schema(
    frozenset({"cpu", "memory"}), other="unsupported resource (podunit supports cpu and memory)"
)
_SECURITY = schema(
    "runAsUser runAsGroup runAsNonRoot privileged capabilities readOnlyRootFilesystem"
    " allowPrivilegeEscalation",
    "appArmorProfile procMount seccompProfile seLinuxOptions windowsOptions",
)
_CAPABILITIES = schema("add drop")
_VOLUME = schema(
    "name hostPath emptyDir",
    "awsElasticBlockStore azureDisk azureFile cephfs cinder configMap csi downwardAPI"
    " ephemeral fc flexVolume flocker gcePersistentDisk gitRepo glusterfs image iscsi nfs"
    " persistentVolumeClaim photonPersistentDisk portworxVolume projected quobyte rbd scaleIO"
    " secret storageos vsphereVolume",
    message="unsupported volume type (podunit supports hostPath and emptyDir)",
)
_HOST_PATH = schema("path type")
_EMPTY_DIR = schema("medium sizeLimit")
_MEDIA = ("", "Memory")
_HOST_ALIAS = schema("ip hostnames")
_DNS_CONFIG = schema("nameservers searches options")
_DNS_OPTION = schema("name value")
# Kubernetes' limits (ValidatePodDNSConfig): glibc reads at most 3 name servers.
MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
MAX_SEARCH_CHARS = 2048


def load_pods(path: str | os.PathLike[str]) -> list[spec.Pod]:
    """Read every pod of a manifest file; raise ManifestError listing all problems."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = file.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ManifestError([FieldError(source, 0, "", f"cannot read: {reason}")]) from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError([_too_big(source)])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError([FieldError(source, line, "", "not valid UTF-8")]) from None
    return parse_pods(text, source)


def parse_pods(text: str, source: str) -> list[spec.Pod]:
    """Parse the pods of manifest text; `source` names the file in messages."""
    if len(text) > MAX_MANIFEST_BYTES or len(text.encode("utf-8", "replace")) > MAX_MANIFEST_BYTES:
        raise ManifestError([_too_big(source)])
    walker = Walker(source)
    pods: list[spec.Pod] = []
    if _nesting_ok(text, walker):
        pods = _documents(text, walker)
        if not pods and not walker.errors:
            walker.error(0, "", "no Pod in this manifest")
    if walker.errors:
        # Checks run field by field, not line by line; readers expect file order.
        raise ManifestError(sorted(walker.errors, key=lambda error: error.line))
    return pods


def _too_big(source: str) -> FieldError:
    return FieldError(source, 0, "", f"larger than {MAX_MANIFEST_BYTES} bytes (1 MiB): refused")


def _nesting_ok(text: str, walker: Walker) -> bool:
    # The event stream is flat, so depth can be measured without recursing.
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    walker.error(line_of(event), "", f"nested deeper than {MAX_NESTING} levels")
                    return False
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        pass  # compose_all reports it, after checking the documents before it
    return True


def _documents(text: str, walker: Walker) -> list[spec.Pod]:
    pods: list[spec.Pod] = []
    names: dict[str, int] = {}  # pod name -> line of the pod
    try:
        for document in yaml.compose_all(text, Loader=_LOADER):
            if document is None or document.tag == NULL:
                continue
            pod = _pod(walker, document, names)
            if pod is not None:
                pods.append(pod)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        reason = ": ".join(str(part) for part in (exc.context, exc.problem) if part)
        walker.error(line, "", f"invalid YAML: {reason or exc}")
    except yaml.reader.ReaderError as exc:
        walker.error(text.count("\n", 0, exc.position) + 1, "", f"invalid YAML: {exc.reason}")
    except yaml.YAMLError as exc:
        walker.error(0, "", f"invalid YAML: {exc}")
    except TooComplex:
        walker.error(0, "", "YAML aliases expand to more nodes than any pod needs: refused")
    return pods


def _pod(walker: Walker, node: Node, names: dict[str, int]) -> spec.Pod | None:
    top = walker.mapping(node, "", _TOP)
    if not top.present:
        return None
    # A Deployment or a Service would bury the one useful message under many.
    api_version = top.string("apiVersion", required=True)
    kind = top.string("kind", required=True)
    if api_version not in (None, "v1"):
        top.error("apiVersion", f'must be "v1", not "{api_version}"')
        return None
    if kind not in (None, "Pod"):
        top.error("kind", f'must be "Pod", not "{kind}"')
        return None
    top.require("metadata")
    top.require("spec")
    metadata = _metadata(top.mapping("metadata", _METADATA), names, top.line)
    pod_spec = _spec(top.mapping("spec", _SPEC))
    return spec.Pod(metadata, pod_spec, source=walker.source, line=top.line)


def _metadata(meta: Fields, names: dict[str, int], line: int) -> spec.ObjectMeta:
    name = meta.string("name", pod_name, required=True)
    if name is not None and name in names:
        meta.error("name", f'"{name}" is already the name of the pod at line {names[name]}')
    elif name is not None:
        names[name] = line
    meta.string("namespace", dns_label)
    labels = _string_map(meta, "labels", label_value)
    annotations = _string_map(meta, "annotations", None)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        message = f"{size} bytes in total, more than the {MAX_ANNOTATIONS_BYTES} allowed"
        meta.walker.error(meta.line_of("annotations"), meta.at("annotations"), message)
    return spec.ObjectMeta(name or "", labels, annotations)


def _string_map(parent: Fields, key: str, check: Check | None) -> dict[str, str]:
    """Labels or annotations: qualified-name keys to string values."""
    fields = parent.mapping(key, None)
    result: dict[str, str] = {}
    for name, (key_node, value_node) in fields.entries.items():
        path = fields.at(name)
        problem = qualified_name(name)
        if problem is not None:
            fields.walker.error_at(key_node, path, problem)
        # A null value is the empty string, as Kubernetes' JSON decoding has it.
        value = "" if value_node.tag == NULL else fields.walker.string(value_node, path, check)
        if value is not None:
            result[name] = value
    return result


@dataclass
class _Scope:
    """What containers of one pod are checked against, and what they claim."""

    volumes: frozenset[str]
    security: spec.PodSecurityContext
    host_network: bool
    containers: dict[str, str] = field(default_factory=dict)  # name -> path
    ports: dict[tuple[int, str], str] = field(default_factory=dict)  # port/protocol -> path


def _spec(fields: Fields) -> spec.PodSpec:
    walker = fields.walker
    security_fields = fields.mapping("securityContext", _POD_SECURITY)
    security = _pod_security(security_fields)
    volumes = tuple(_volumes(fields))
    host_network = fields.boolean("hostNetwork") is True
    scope = _Scope(frozenset(v.name for v in volumes), security, host_network)
    # Init containers run first, so a clash is reported on the regular container.
    init = tuple(_container(walker, p, n, scope) for p, n in fields.sequence("initContainers"))
    fields.require("containers")
    items = fields.sequence("containers")
    containers = tuple(_container(walker, p, n, scope) for p, n in items)
    node = fields.get("containers")
    if node is not None and node.tag == SEQ and not items:
        fields.error("containers", "must list at least one container")
    _check_pod_user(security_fields, security, [*init, *containers])
    host_pid = fields.boolean("hostPID") is True
    share = fields.boolean("shareProcessNamespace") is True
    if host_pid and share:
        fields.error("shareProcessNamespace", "cannot be true when hostPID is true")
    grace = fields.integer("terminationGracePeriodSeconds", 0, INT64_MAX)
    dns_policy, dns_config = _dns(fields)
    return spec.PodSpec(
        containers=containers,
        init_containers=init,
        volumes=volumes,
        restart_policy=fields.choice("restartPolicy", spec.RESTART_POLICIES) or "Always",
        host_network=host_network,
        host_pid=host_pid,
        host_ipc=fields.boolean("hostIPC") is True,
        share_process_namespace=share,
        hostname=fields.string("hostname", dns_label),
        termination_grace_period_seconds=30 if grace is None else grace,
        security_context=security,
        host_aliases=_host_aliases(fields),
        dns_policy=dns_policy,
        dns_config=dns_config,
    )


def _host_aliases(fields: Fields) -> tuple[spec.HostAlias, ...]:
    aliases = []
    for path, node in fields.sequence("hostAliases"):
        alias = fields.walker.mapping(node, path, _HOST_ALIAS)
        ip = alias.string("ip", _ip_problem, required=True)
        hostnames = []
        for name_path, name_node in alias.sequence("hostnames"):
            name = alias.walker.string(name_node, name_path, dns_subdomain)
            if name is not None:
                hostnames.append(name)
        aliases.append(spec.HostAlias(ip or "", tuple(hostnames)))
    return tuple(aliases)


def _dns(fields: Fields) -> tuple[str, spec.DNSConfig | None]:
    """dnsPolicy and dnsConfig, checked together as Kubernetes does."""
    policy = fields.choice("dnsPolicy", spec.DNS_POLICIES)
    config_fields = fields.mapping("dnsConfig", _DNS_CONFIG)
    config = _dns_config(config_fields) if config_fields.present else None
    if policy == "None" and (config is None or not config.nameservers):
        fields.error("dnsPolicy", "None needs dnsConfig with at least one nameserver")
    return policy or "ClusterFirst", config


def _dns_config(fields: Fields) -> spec.DNSConfig:
    nameservers = [
        server
        for path, node in fields.sequence("nameservers")
        if (server := fields.walker.string(node, path, _ip_problem)) is not None
    ]
    if len(nameservers) > MAX_NAMESERVERS:
        fields.error("nameservers", f"must not list more than {MAX_NAMESERVERS} name servers")
    searches = [
        domain
        for path, node in fields.sequence("searches")
        if (domain := fields.walker.string(node, path, _search_problem)) is not None
    ]
    if len(searches) > MAX_SEARCHES:
        fields.error("searches", f"must not list more than {MAX_SEARCHES} domains")
    elif sum(len(s) for s in searches) + len(searches) > MAX_SEARCH_CHARS:
        fields.error("searches", f"must not be longer than {MAX_SEARCH_CHARS} characters in all")
    options = []
    for path, node in fields.sequence("options"):
        option = fields.walker.mapping(node, path, _DNS_OPTION)
        name = option.string("name", _dns_option_problem, required=True)
        options.append(spec.DNSOption(name or "", option.string("value", _dns_option_problem)))
    return spec.DNSConfig(tuple(nameservers), tuple(searches), tuple(options))


def _search_problem(text: str) -> str | None:
    # A trailing dot is the fully qualified spelling of the same domain.
    return dns_subdomain(text[:-1] if text.endswith(".") and len(text) > 1 else text)


def _dns_option_problem(text: str) -> str | None:
    # Each option becomes one word of a resolv.conf line.
    if not text or any(c.isspace() for c in text):
        return f'"{text}" must be a non-empty word without white space'
    return None


def _pod_security(fields: Fields) -> spec.PodSecurityContext:
    return spec.PodSecurityContext(
        run_as_user=fields.integer("runAsUser", 0, INT32_MAX),
        run_as_group=fields.integer("runAsGroup", 0, INT32_MAX),
        run_as_non_root=fields.boolean("runAsNonRoot"),
    )


def _check_pod_user(
    fields: Fields, pod: spec.PodSecurityContext, containers: list[spec.Container]
) -> None:
    """runAsNonRoot with runAsUser 0, both at pod level, matters only to a
    container that overrides neither (as the kubelet decides per container)."""
    if not (pod.run_as_non_root and pod.run_as_user == 0):
        return
    for container in containers:
        own = container.security_context
        if own.run_as_user is None and own.run_as_non_root is None:
            fields.error("runAsUser", "is 0 but runAsNonRoot is true")
            return


def _volumes(fields: Fields) -> list[spec.Volume]:
    volumes: list[spec.Volume] = []
    seen: dict[str, str] = {}
    for path, node in fields.sequence("volumes"):
        volume = fields.walker.mapping(node, path, _VOLUME)
        name = volume.string("name", dns_label, required=True)
        if name is not None and name in seen:
            volume.error("name", f'"{name}" is already the name of {seen[name]}')
        elif name is not None:
            seen[name] = path
        sources = [key for key in ("hostPath", "emptyDir") if volume.get(key) is not None]
        sources.sort(key=volume.line_of)  # blame the one written second
        if len(sources) > 1:
            volume.error(sources[1], f"a volume has one source, and {sources[0]} is set too")
        elif not sources and volume.present and not volume.rejected:
            # A rejected key (configMap, a typo) was probably meant as the source.
            fields.walker.error(volume.line, path, "needs a source: hostPath or emptyDir")
        host_path = empty_dir = None
        if "hostPath" in sources:
            host_path = _host_path(volume.mapping("hostPath", _HOST_PATH))
        if "emptyDir" in sources:
            empty_dir = _empty_dir(volume.mapping("emptyDir", _EMPTY_DIR))
        volumes.append(spec.Volume(name or "", host_path=host_path, empty_dir=empty_dir))
    return volumes


def _host_path(fields: Fields) -> spec.HostPathVolume:
    path = fields.string("path", _host_path_problem, required=True)
    kind = fields.choice("type", spec.HOST_PATH_TYPES)
    return spec.HostPathVolume(path or "", kind or "")


def _host_path_problem(path: str) -> str | None:
    if ".." in path.split("/"):
        return f"\"{path}\" must not contain a '..' component"
    return absolute_path(path)


def _empty_dir(fields: Fields) -> spec.EmptyDirVolume:
    medium = fields.choice("medium", _MEDIA)
    limit = fields.quantity("sizeLimit")
    if limit is not None and limit <= 0:
        # tmpfs reads size=0 as "unlimited": the opposite of what was asked.
        fields.error("sizeLimit", "must be greater than zero")
        limit = None
    size = None if limit is None else to_bytes(limit)
    return spec.EmptyDirVolume(medium or "", size)


def _container(walker: Walker, path: str, node: Node, scope: _Scope) -> spec.Container:
    fields = walker.mapping(node, path, _CONTAINER)
    name = fields.string("name", dns_label, required=True)
    if name is not None and name in scope.containers:
        fields.error("name", f'"{name}" is already the name of {scope.containers[name]}')
    elif name is not None:
        scope.containers[name] = path
    security = _security(fields.mapping("securityContext", _SECURITY), scope.security)
    return spec.Container(
        name=name or "",
        image=fields.string("image", _image_problem, required=True) or "",
        command=fields.strings("command"),
        args=fields.strings("args"),
        working_dir=fields.string("workingDir", absolute_path),
        env=_env(fields),
        ports=_ports(fields, scope),
        volume_mounts=_mounts(fields, scope, security.privileged),
        resources=_resources(fields.mapping("resources", _RESOURCES)),
        security_context=security,
        image_pull_policy=fields.choice("imagePullPolicy", spec.PULL_POLICIES),
        line=line_of(node),
    )


def _image_problem(text: str) -> str | None:
    try:
        parse_reference(text)
    except ReferenceError as exc:
        return str(exc)
    return None


def _env(container: Fields) -> tuple[spec.EnvVar, ...]:
    result: list[spec.EnvVar] = []
    seen: dict[str, str] = {}
    for path, node in container.sequence("env"):
        fields = container.walker.mapping(node, path, _ENV)
        name = fields.string("name", env_name, required=True)
        value = fields.string("value")
        if name is not None and name in seen:
            fields.error("name", f'"{name}" is already set by {seen[name]}')
        elif name is not None:
            seen[name] = path
        result.append(spec.EnvVar(name or "", value or ""))
    return tuple(result)


def _ports(container: Fields, scope: _Scope) -> tuple[spec.ContainerPort, ...]:
    result: list[spec.ContainerPort] = []
    names: dict[str, str] = {}
    for path, node in container.sequence("ports"):
        fields = container.walker.mapping(node, path, _PORT)
        number = fields.integer("containerPort", 1, 65535, required=True)
        host_port = fields.integer("hostPort", 1, 65535)
        name = fields.string("name", port_name)
        protocol = fields.choice("protocol", spec.PROTOCOLS)
        host_ip = fields.string("hostIP", _ip_problem)
        protocol_ok = protocol is not None or fields.get("protocol") is None
        if number is not None and protocol_ok:
            key = (number, protocol or "TCP")
            if key in scope.ports:
                message = f"{key[0]}/{key[1]} is already declared by {scope.ports[key]}"
                fields.error("containerPort", message)
            scope.ports.setdefault(key, path)
        if name is not None and name in names:
            fields.error("name", f'"{name}" is already the name of {names[name]}')
        elif name is not None:
            names[name] = path
        if scope.host_network and host_port is not None and host_port != number:
            fields.error("hostPort", "must equal containerPort when hostNetwork is true")
        port = spec.ContainerPort(number or 0, name, host_port, host_ip, protocol or "TCP")
        result.append(port)
    return tuple(result)


def _ip_problem(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return f'"{text}" is not an IP address'
    return None


def _mounts(container: Fields, scope: _Scope, privileged: bool) -> tuple[spec.VolumeMount, ...]:
    result: list[spec.VolumeMount] = []
    targets: dict[str, str] = {}
    for path, node in container.sequence("volumeMounts"):
        fields = container.walker.mapping(node, path, _MOUNT)
        name = fields.string("name", required=True)
        if name is not None and name not in scope.volumes:
            fields.error("name", f'no volume named "{name}" in spec.volumes')
        target = fields.string("mountPath", _mount_path_problem, required=True)
        if target is not None:
            # "/data" and "/data/" are one mount point to the kernel.
            normal = posixpath.normpath(target)
            if normal in targets:
                fields.error("mountPath", f'"{target}" is already mounted by {targets[normal]}')
            targets.setdefault(normal, path)
        propagation = fields.choice("mountPropagation", spec.MOUNT_PROPAGATIONS)
        if propagation == "Bidirectional" and not privileged:
            message = "Bidirectional needs a privileged container (securityContext.privileged)"
            fields.error("mountPropagation", message)
        mount = spec.VolumeMount(
            name=name or "",
            mount_path=target or "",
            read_only=fields.boolean("readOnly") is True,
            sub_path=fields.string("subPath", _sub_path_problem) or "",
            mount_propagation=propagation or "None",
        )
        result.append(mount)
    return tuple(result)


def _mount_path_problem(text: str) -> str | None:
    if ":" in text:
        return f"\"{text}\" must not contain ':'"
    return absolute_path(text)


def _sub_path_problem(text: str) -> str | None:
    if text.startswith("/"):
        return f'"{text}" must be a relative path'
    if ".." in text.split("/"):
        return f"\"{text}\" must not contain a '..' component"
    return None


def _resources(fields: Fields) -> spec.Resources:
    limits_fields = fields.mapping("limits", _QUANTITIES)
    requests_fields = fields.mapping("requests", _QUANTITIES)
    limits = _quantities(limits_fields)
    requests = _quantities(requests_fields)
    for name in ("cpu", "memory"):
        if name in limits and name in requests and requests[name] > limits[name]:
            limit_node = limits_fields.get(name)
            limit_text = "" if limit_node is None else limit_node.value
            requests_fields.error(name, f"must be less than or equal to the limit ({limit_text})")
    return spec.Resources(
        limits_cpu_millis=_millis(limits.get("cpu")),
        limits_memory=_bytes(limits.get("memory")),
        requests_cpu_millis=_millis(requests.get("cpu")),
        requests_memory=_bytes(requests.get("memory")),
    )


def _quantities(fields: Fields) -> dict[str, Fraction]:
    result: dict[str, Fraction] = {}
    cpu = fields.quantity("cpu")
    if cpu is not None and cpu <= 0:
        fields.error("cpu", "must be greater than zero")
    elif cpu is not None:
        result["cpu"] = cpu
    memory = fields.quantity("memory")
    if memory is not None and memory < 0:
        fields.error("memory", "must not be negative")
    elif memory is not None:
        result["memory"] = memory
    return result


def _millis(value: Fraction | None) -> int | None:
    return None if value is None else to_millicores(value)


def _bytes(value: Fraction | None) -> int | None:
    return None if value is None else to_bytes(value)


def _security(fields: Fields, pod: spec.PodSecurityContext) -> spec.SecurityContext:
    privileged = fields.boolean("privileged") is True
    escalation = fields.boolean("allowPrivilegeEscalation")
    caps = fields.mapping("capabilities", _CAPABILITIES)
    add = _capabilities(caps, "add")
    if escalation is False and privileged:
        fields.error("allowPrivilegeEscalation", "cannot be false when privileged is true")
    elif escalation is False and ("SYS_ADMIN" in add or "ALL" in add):
        message = "cannot be false when capabilities.add grants SYS_ADMIN"
        fields.error("allowPrivilegeEscalation", message)
    user = fields.integer("runAsUser", 0, INT32_MAX)
    non_root = fields.boolean("runAsNonRoot")
    # Whatever is left unset here is inherited from the pod, checked there.
    if user == 0 and (non_root if non_root is not None else pod.run_as_non_root):
        origin = "" if non_root is not None else " (in spec.securityContext)"
        fields.error("runAsUser", f"is 0 but runAsNonRoot is true{origin}")
    elif user is None and non_root and pod.run_as_user == 0:
        fields.error("runAsNonRoot", "is true but spec.securityContext.runAsUser is 0")
    return spec.SecurityContext(
        run_as_user=user,
        run_as_group=fields.integer("runAsGroup", 0, INT32_MAX),
        run_as_non_root=non_root,
        privileged=privileged,
        capabilities=spec.Capabilities(add, _capabilities(caps, "drop")),
        read_only_root_filesystem=fields.boolean("readOnlyRootFilesystem") is True,
        allow_privilege_escalation=escalation,
    )


def _capabilities(caps: Fields, key: str) -> tuple[str, ...]:
    names: list[str] = []
    for path, node in caps.sequence(key):
        text = caps.walker.string(node, path)
        if text is None:
            continue
        name, problem = capability(text)
        if problem is not None:
            caps.walker.error_at(node, path, problem)
        elif name is not None and name not in names:
            names.append(name)
    return tuple(names)
