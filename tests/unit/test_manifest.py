from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from podunit import spec
from podunit.errors import FieldError, ManifestError
from podunit.manifest import MAX_MANIFEST_BYTES, load_pods, parse_pods

# Lines 1-8; helpers below append container fields from line 9 on.
MINIMAL = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: app
    image: busybox
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Messages name the file as given: a relative name keeps expectations short.
    monkeypatch.chdir(tmp_path)


def write(text: str, name: str = "pod.yaml") -> Path:
    path = Path(name)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(text: str) -> list[spec.Pod]:
    return load_pods(write(text))


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load(text)
    return [str(error) for error in info.value.errors]


def short_id(value: object) -> str | None:
    """Test ids from the manifest snippet, kept readable."""
    return value.replace("\n", "|")[:40] if isinstance(value, str) else None


def with_container(fields: str) -> str:
    """MINIMAL plus fields of its container, starting at line 9."""
    return MINIMAL + textwrap.indent(textwrap.dedent(fields), "    ")


def with_spec(fields: str) -> str:
    """MINIMAL plus pod spec fields, starting at line 9."""
    return MINIMAL + textwrap.indent(textwrap.dedent(fields), "  ")


FULL = """\
    apiVersion: v1
    kind: Pod
    metadata:
      name: web
      namespace: default
      labels:
        app: web
        app.kubernetes.io/name: web-1
        empty: ""
      annotations:
        example.com/note: "any text: at all"
    spec:
      restartPolicy: OnFailure
      hostname: webhost
      hostNetwork: false
      hostIPC: true
      shareProcessNamespace: true
      terminationGracePeriodSeconds: 10
      securityContext:
        runAsUser: 1000
        runAsGroup: 1001
        runAsNonRoot: true
      volumes:
      - name: data
        hostPath:
          path: /srv/data
          type: DirectoryOrCreate
      - name: scratch
        emptyDir:
          medium: Memory
          sizeLimit: 64Mi
      - name: cache
        emptyDir: {}
      initContainers:
      - name: init
        image: oci:/var/lib/images/init:v1
        command: [sh, -c, "true"]
      containers:
      - name: app
        image: docker.io/library/nginx:1.25
        imagePullPolicy: IfNotPresent
        args: ["--port", "80"]
        workingDir: /app
        env:
        - name: A
          value: "1"
        - name: B
        - name: my.var-x
          value: ""
        ports:
        - containerPort: 80
          hostPort: 8080
          name: http
          hostIP: 127.0.0.1
        - containerPort: 53
          protocol: UDP
          hostIP: "::1"
        volumeMounts:
        - name: data
          mountPath: /data
          readOnly: true
          subPath: sub/dir
        - name: scratch
          mountPath: /scratch
          mountPropagation: HostToContainer
        resources:
          limits: {cpu: 500m, memory: 1Gi}
          requests: {cpu: 0.25, memory: 512Mi}
        securityContext:
          runAsUser: 1002
          privileged: false
          capabilities:
            add: [cap_net_admin, NET_RAW, Cap_Chown]
            drop: [all]
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
      - name: sidecar
        image: busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000
        imagePullPolicy: Never
        securityContext:
          privileged: true
          runAsNonRoot: false
        volumeMounts:
        - name: cache
          mountPath: /cache
          mountPropagation: Bidirectional
"""


def test_full_pod_round_trips_to_dataclasses() -> None:
    [pod] = load(FULL)
    app = spec.Container(
        name="app",
        image="docker.io/library/nginx:1.25",
        image_pull_policy="IfNotPresent",
        args=("--port", "80"),
        working_dir="/app",
        env=(spec.EnvVar("A", "1"), spec.EnvVar("B", ""), spec.EnvVar("my.var-x", "")),
        ports=(
            spec.ContainerPort(80, name="http", host_port=8080, host_ip="127.0.0.1"),
            spec.ContainerPort(53, protocol="UDP", host_ip="::1"),
        ),
        volume_mounts=(
            spec.VolumeMount("data", "/data", read_only=True, sub_path="sub/dir"),
            spec.VolumeMount("scratch", "/scratch", mount_propagation="HostToContainer"),
        ),
        resources=spec.Resources(
            limits_cpu_millis=500,
            limits_memory=2**30,
            requests_cpu_millis=250,
            requests_memory=2**29,
        ),
        security_context=spec.SecurityContext(
            run_as_user=1002,
            capabilities=spec.Capabilities(add=("NET_ADMIN", "NET_RAW", "CHOWN"), drop=("ALL",)),
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
        ),
        line=39,
    )
    sidecar = spec.Container(
        name="sidecar",
        image="busybox@sha256:" + "0" * 64,
        image_pull_policy="Never",
        security_context=spec.SecurityContext(privileged=True, run_as_non_root=False),
        volume_mounts=(spec.VolumeMount("cache", "/cache", mount_propagation="Bidirectional"),),
        line=77,
    )
    init = spec.Container(
        name="init",
        image="oci:/var/lib/images/init:v1",
        command=("sh", "-c", "true"),
        line=35,
    )
    assert pod == spec.Pod(
        metadata=spec.ObjectMeta(
            name="web",
            labels={"app": "web", "app.kubernetes.io/name": "web-1", "empty": ""},
            annotations={"example.com/note": "any text: at all"},
        ),
        spec=spec.PodSpec(
            containers=(app, sidecar),
            init_containers=(init,),
            volumes=(
                spec.Volume(
                    "data", host_path=spec.HostPathVolume("/srv/data", "DirectoryOrCreate")
                ),
                spec.Volume("scratch", empty_dir=spec.EmptyDirVolume("Memory", 64 * 2**20)),
                spec.Volume("cache", empty_dir=spec.EmptyDirVolume()),
            ),
            restart_policy="OnFailure",
            host_ipc=True,
            share_process_namespace=True,
            hostname="webhost",
            termination_grace_period_seconds=10,
            security_context=spec.PodSecurityContext(1000, 1001, True),
        ),
        source="pod.yaml",
        line=1,
    )
    assert pod.name == "web"


def test_minimal_pod_gets_kubernetes_defaults() -> None:
    [pod] = load(MINIMAL)
    assert pod.spec == spec.PodSpec(containers=(spec.Container("app", "busybox", line=7),))
    assert pod.spec.restart_policy == "Always"
    assert pod.spec.termination_grace_period_seconds == 30
    assert pod.metadata == spec.ObjectMeta("web")
    assert (pod.source, pod.line) == ("pod.yaml", 1)


def test_parse_pods_from_text_matches_load_pods() -> None:
    assert parse_pods(MINIMAL, "pod.yaml") == load(MINIMAL)


def test_load_pods_accepts_str_paths() -> None:
    write(MINIMAL)
    assert load_pods("pod.yaml")[0].source == "pod.yaml"


def test_multi_document_file_skips_empty_documents() -> None:
    text = "---\n# only a comment\n---\n" + MINIMAL + "---\n---\n" + MINIMAL.replace("web", "db")
    pods = load(text)
    assert [(p.name, p.line, p.spec.containers[0].line) for p in pods] == [
        ("web", 4, 10),
        ("db", 14, 20),
    ]


def test_yaml_anchors_and_merge_keys() -> None:
    [pod] = load(
        """\
        apiVersion: v1
        kind: Pod
        metadata: {name: web}
        spec:
          containers:
          - &base
            name: app
            image: busybox
            env: &env [{name: A, value: x}]
          - <<: *base
            name: copy
            args: [one]
        """
    )
    first, second = pod.spec.containers
    assert (second.name, second.image, second.args) == ("copy", "busybox", ("one",))
    assert second.env == first.env == (spec.EnvVar("A", "x"),)


def test_null_values_read_as_unset() -> None:
    [pod] = load(with_container("env:\nargs: ~\nports: null\n"))
    assert pod.spec.containers[0].env == ()
    assert pod.spec.containers[0].args is None


def test_quantities_may_be_yaml_numbers() -> None:
    [pod] = load(
        with_container("resources:\n  limits: {cpu: 2, memory: 1e3}\n  requests: {cpu: 0.5}\n")
    )
    assert pod.spec.containers[0].resources == spec.Resources(
        limits_cpu_millis=2000, limits_memory=1000, requests_cpu_millis=500
    )


# Each case: container fields (from line 9), then the exact messages.
CONTAINER_ERRORS = [
    ("foo: 1", ["pod.yaml:9: spec.containers[0].foo: unknown field"]),
    (
        "livenessProbe: {}",
        [
            "pod.yaml:9: spec.containers[0].livenessProbe: "
            "unsupported field (podunit does not support it yet)"
        ],
    ),
    (
        "envFrom: []",
        [
            "pod.yaml:9: spec.containers[0].envFrom: unsupported "
            "field (podunit does not support it yet)"
        ],
    ),
    (
        "tty: true",
        ["pod.yaml:9: spec.containers[0].tty: unsupported field (podunit does not support it yet)"],
    ),
    (
        "command: sleep 10",
        ["pod.yaml:9: spec.containers[0].command: expected a list, got a string"],
    ),
    (
        "args: [a, 1]",
        [
            "pod.yaml:9: spec.containers[0].args[1]: expected a string, "
            'got an integer; quote "1" to make it a string'
        ],
    ),
    (
        "workingDir: app",
        ['pod.yaml:9: spec.containers[0].workingDir: "app" is not an absolute path'],
    ),
    (
        "imagePullPolicy: Sometimes",
        [
            'pod.yaml:9: spec.containers[0].imagePullPolicy: "Sometimes" '
            'is not one of "Always", "IfNotPresent", "Never"'
        ],
    ),
    (
        "env:\n- name: 1X\n  value: a",
        [
            'pod.yaml:10: spec.containers[0].env[0].name: "1X" is not a valid environment '
            "variable name: letters, digits, '_', '-' and '.', not starting with a digit"
        ],
    ),
    (
        "env:\n- name: A\n  value: 8080",
        [
            "pod.yaml:11: spec.containers[0].env[0].value: expected a "
            'string, got an integer; quote "8080" to make it a string'
        ],
    ),
    (
        "env:\n- name: A\n- name: A\n  value: x",
        [
            'pod.yaml:11: spec.containers[0].env[1].name: "A" is '
            "already set by spec.containers[0].env[0]"
        ],
    ),
    (
        "env:\n- name: A\n  valueFrom: {fieldRef: {fieldPath: x}}",
        [
            "pod.yaml:11: spec.containers[0].env[0].valueFrom: "
            "unsupported field (podunit does not support it yet)"
        ],
    ),
    (
        "env:\n- value: x",
        ["pod.yaml:10: spec.containers[0].env[0].name: required field is missing"],
    ),
    (
        "ports:\n- containerPort: 0",
        [
            "pod.yaml:10: "
            "spec.containers[0].ports[0].containerPort: "
            "must be between 1 and 65535, not 0"
        ],
    ),
    (
        "ports:\n- containerPort: '80'",
        [
            "pod.yaml:10: "
            "spec.containers[0].ports[0].containerPort: "
            "expected an integer, got a string"
        ],
    ),
    (
        "ports:\n- containerPort: 80.0",
        [
            "pod.yaml:10: "
            "spec.containers[0].ports[0].containerPort: "
            "expected an integer, got a number"
        ],
    ),
    (
        "ports:\n- name: http",
        ["pod.yaml:10: spec.containers[0].ports[0].containerPort: required field is missing"],
    ),
    (
        "ports:\n- {containerPort: 80, hostPort: 70000}",
        [
            "pod.yaml:10: spec.containers[0].ports[0].hostPort: "
            "must be between 1 and 65535, not 70000"
        ],
    ),
    (
        "ports:\n- {containerPort: 80, protocol: tcp}",
        [
            "pod.yaml:10: spec.containers[0].ports[0].protocol: "
            '"tcp" is not one of "TCP", "UDP", "SCTP"'
        ],
    ),
    (
        "ports:\n- {containerPort: 80, hostIP: 1.2.3}",
        ['pod.yaml:10: spec.containers[0].ports[0].hostIP: "1.2.3" is not an IP address'],
    ),
    (
        "ports:\n- {containerPort: 80}\n- {containerPort: 80, protocol: UDP}\n"
        "- {containerPort: 80}",
        [
            "pod.yaml:12: spec.containers[0].ports[2].containerPort: 80/TCP "
            "is already declared by spec.containers[0].ports[0]"
        ],
    ),
    (
        "ports:\n- {containerPort: 80, name: http}\n- {containerPort: 81, name: http}",
        [
            'pod.yaml:11: spec.containers[0].ports[1].name: "http" is '
            "already the name of spec.containers[0].ports[0]"
        ],
    ),
    (
        "volumeMounts:\n- {name: nope, mountPath: /x}",
        [
            "pod.yaml:10: spec.containers[0].volumeMounts[0].name: "
            'no volume named "nope" in spec.volumes'
        ],
    ),
    (
        "resources:\n  limits:\n    memory: 64Mx",
        ['pod.yaml:11: spec.containers[0].resources.limits.memory: "64Mx" is not a quantity'],
    ),
    (
        "resources:\n  limits:\n    memory: true",
        [
            "pod.yaml:11: spec.containers[0].resources.limits.memory: "
            "expected a quantity (such as 512Mi or 0.5), got a boolean"
        ],
    ),
    (
        "resources:\n  requests:\n    cpu: 0",
        ["pod.yaml:11: spec.containers[0].resources.requests.cpu: must be greater than zero"],
    ),
    (
        "resources:\n  requests:\n    memory: -1Mi",
        ["pod.yaml:11: spec.containers[0].resources.requests.memory: must not be negative"],
    ),
    (
        "resources:\n  limits: {cpu: 500m, memory: 1Gi}\n  requests: {cpu: '1', memory: 1Gi}",
        [
            "pod.yaml:11: spec.containers[0].resources.requests.cpu: "
            "must be less than or equal to the limit (500m)"
        ],
    ),
    (
        "resources:\n  limits:\n    nvidia.com/gpu: 1\n    ephemeral-storage: 1Gi",
        [
            "pod.yaml:11: spec.containers[0].resources.limits.nvidia.com/gpu: "
            "unsupported resource (podunit supports cpu and memory)",
            "pod.yaml:12: spec.containers[0].resources.limits.ephemeral-storage: "
            "unsupported resource (podunit supports cpu and memory)",
        ],
    ),
    (
        "resources:\n  claims: []",
        [
            "pod.yaml:10: spec.containers[0].resources.claims: "
            "unsupported field (podunit does not support it yet)"
        ],
    ),
    (
        "securityContext:\n  runAsUser: -1",
        [
            "pod.yaml:10: "
            "spec.containers[0].securityContext.runAsUser: "
            "must be between 0 and 2147483647, not -1"
        ],
    ),
    (
        "securityContext:\n  runAsGroup: 2147483648",
        [
            "pod.yaml:10: spec.containers[0].securityContext.runAsGroup: "
            "must be between 0 and 2147483647, not 2147483648"
        ],
    ),
    (
        "securityContext:\n  privileged: yes",
        [
            "pod.yaml:10: spec.containers[0].securityContext.privileged: "
            'expected a boolean (true or false), got "yes"'
        ],
    ),
    (
        "securityContext:\n  privileged: 'true'",
        [
            "pod.yaml:10: "
            "spec.containers[0].securityContext.privileged: "
            "expected a boolean, got a string"
        ],
    ),
    (
        "securityContext:\n  privileged: true\n  allowPrivilegeEscalation: false",
        [
            "pod.yaml:11: "
            "spec.containers[0].securityContext.allowPrivilegeEscalation: "
            "cannot be false when privileged is true"
        ],
    ),
    (
        "securityContext:\n  runAsUser: 0\n  runAsNonRoot: true",
        [
            "pod.yaml:10: "
            "spec.containers[0].securityContext.runAsUser: "
            "is 0 but runAsNonRoot is true"
        ],
    ),
    (
        "securityContext:\n  capabilities:\n    add: [CAP_FOO]\n    drop: ALL",
        [
            "pod.yaml:11: "
            "spec.containers[0].securityContext.capabilities.add[0]: "
            '"CAP_FOO" is not a Linux capability name',
            "pod.yaml:12: "
            "spec.containers[0].securityContext.capabilities.drop: "
            "expected a list, got a string",
        ],
    ),
    (
        "securityContext:\n  seccompProfile: {type: RuntimeDefault}",
        [
            "pod.yaml:10: spec.containers[0].securityContext.seccompProfile: "
            "unsupported field (podunit does not support it yet)"
        ],
    ),
    (
        "securityContext: []",
        ["pod.yaml:9: spec.containers[0].securityContext: expected a mapping, got a list"],
    ),
]


@pytest.mark.parametrize(("fields", "expected"), CONTAINER_ERRORS, ids=short_id)
def test_container_errors(fields: str, expected: list[str]) -> None:
    assert problems(with_container(fields)) == expected


VOLUME_MOUNT_ERRORS = [
    (
        "mountPath: data",
        [
            "pod.yaml:11: "
            "spec.containers[0].volumeMounts[0].mountPath: "
            '"data" is not an absolute path'
        ],
    ),
    (
        "mountPath: /a:b",
        [
            "pod.yaml:11: "
            "spec.containers[0].volumeMounts[0].mountPath: "
            "\"/a:b\" must not contain ':'"
        ],
    ),
    (
        "mountPath: /v\n  subPath: /abs",
        ['pod.yaml:12: spec.containers[0].volumeMounts[0].subPath: "/abs" must be a relative path'],
    ),
    (
        "mountPath: /v\n  subPath: a/../../b",
        [
            "pod.yaml:12: spec.containers[0].volumeMounts[0].subPath: "
            "\"a/../../b\" must not contain a '..' component"
        ],
    ),
    (
        "mountPath: /v\n  mountPropagation: Bidirectional",
        [
            "pod.yaml:12: spec.containers[0].volumeMounts[0].mountPropagation: "
            "Bidirectional needs a privileged container (securityContext.privileged)"
        ],
    ),
    (
        "mountPath: /v\n  mountPropagation: Private",
        [
            "pod.yaml:12: spec.containers[0].volumeMounts[0].mountPropagation: "
            '"Private" is not one of "None", "HostToContainer", "Bidirectional"'
        ],
    ),
    (
        "mountPath: /v\n  readOnly: on",
        [
            "pod.yaml:12: spec.containers[0].volumeMounts[0].readOnly: "
            'expected a boolean (true or false), got "on"'
        ],
    ),
    (
        "readOnly: true",
        ["pod.yaml:10: spec.containers[0].volumeMounts[0].mountPath: required field is missing"],
    ),
    (
        "mountPath: /v\n- name: v\n  mountPath: /v/",
        [
            'pod.yaml:13: spec.containers[0].volumeMounts[1].mountPath: "/v/" is '
            "already mounted by spec.containers[0].volumeMounts[0]"
        ],
    ),
]


@pytest.mark.parametrize(("mount", "expected"), VOLUME_MOUNT_ERRORS, ids=short_id)
def test_volume_mount_errors(mount: str, expected: list[str]) -> None:
    text = (
        with_container("volumeMounts:\n- name: v\n  " + mount + "\n")
        + "  volumes:\n  - {name: v, emptyDir: {}}\n"
    )
    assert problems(text) == expected


SPEC_ERRORS = [
    (
        "nodeSelector: {disk: ssd}",
        ["pod.yaml:9: spec.nodeSelector: unsupported field (podunit does not support it yet)"],
    ),
    (
        "serviceAccountName: x",
        [
            "pod.yaml:9: spec.serviceAccountName: unsupported "
            "field (podunit does not support it yet)"
        ],
    ),
    (
        "dnsPolicy: None",
        ["pod.yaml:9: spec.dnsPolicy: None needs dnsConfig with at least one nameserver"],
    ),
    (
        "dnsPolicy: Cluster",
        [
            'pod.yaml:9: spec.dnsPolicy: "Cluster" is not one of "ClusterFirst",'
            ' "ClusterFirstWithHostNet", "Default", "None"'
        ],
    ),
    (
        "dnsConfig:\n  nameservers: [1.1.1.1, 1.0.0.1, 8.8.8.8, 8.8.4.4]",
        ["pod.yaml:10: spec.dnsConfig.nameservers: must not list more than 3 name servers"],
    ),
    (
        "dnsConfig:\n  nameservers: [dns.example]",
        ['pod.yaml:10: spec.dnsConfig.nameservers[0]: "dns.example" is not an IP address'],
    ),
    (
        "dnsConfig:\n  searches: [Bad_Domain]",
        [
            'pod.yaml:10: spec.dnsConfig.searches[0]: "Bad_Domain" is not a valid DNS-1123'
            " subdomain: lowercase letters, digits, '-' and '.', starting and ending with a"
            " letter or digit"
        ],
    ),
    (
        "dnsConfig:\n  options:\n  - value: '2'\n  - {name: 'nd ots'}\n  - {name: x, bad: 1}",
        [
            "pod.yaml:11: spec.dnsConfig.options[0].name: required field is missing",
            'pod.yaml:12: spec.dnsConfig.options[1].name: "nd ots" must be a non-empty word'
            " without white space",
            "pod.yaml:13: spec.dnsConfig.options[2].bad: unknown field",
        ],
    ),
    (
        "dnsConfig:\n  servers: [1.1.1.1]",
        ["pod.yaml:10: spec.dnsConfig.servers: unknown field"],
    ),
    (
        "hostAliases:\n- ip: 10.0.0.300\n  hostnames: [db]\n- hostnames: [UPPER, ok.example]",
        [
            'pod.yaml:10: spec.hostAliases[0].ip: "10.0.0.300" is not an IP address',
            "pod.yaml:12: spec.hostAliases[1].ip: required field is missing",
            'pod.yaml:12: spec.hostAliases[1].hostnames[0]: "UPPER" is not a valid DNS-1123'
            " subdomain: lowercase letters, digits, '-' and '.', starting and ending with a"
            " letter or digit",
        ],
    ),
    (
        "hostAliases:\n- {ip: 10.0.0.1, hostnames: db}",
        ["pod.yaml:10: spec.hostAliases[0].hostnames: expected a list, got a string"],
    ),
    ("contianers: []", ["pod.yaml:9: spec.contianers: unknown field"]),
    (
        "restartPolicy: Sometimes",
        [
            'pod.yaml:9: spec.restartPolicy: "Sometimes" is not '
            'one of "Always", "OnFailure", "Never"'
        ],
    ),
    ("hostNetwork: 1", ["pod.yaml:9: spec.hostNetwork: expected a boolean, got an integer"]),
    (
        "hostPID: true\nshareProcessNamespace: true",
        ["pod.yaml:10: spec.shareProcessNamespace: cannot be true when hostPID is true"],
    ),
    (
        "hostname: My_Host",
        [
            'pod.yaml:9: spec.hostname: "My_Host" is not a valid DNS-1123 label: at most 63 '
            "lowercase letters, digits and '-', starting and ending with a letter or digit"
        ],
    ),
    (
        "terminationGracePeriodSeconds: -1",
        [
            "pod.yaml:9: spec.terminationGracePeriodSeconds: must be "
            "between 0 and 9223372036854775807, not -1"
        ],
    ),
    (
        "terminationGracePeriodSeconds: 0x1F",
        ['pod.yaml:9: spec.terminationGracePeriodSeconds: expected a decimal integer, got "0x1F"'],
    ),
    (
        "securityContext:\n  fsGroup: 1",
        [
            "pod.yaml:10: spec.securityContext.fsGroup: unsupported "
            "field (podunit does not support it yet)"
        ],
    ),
    (
        "initContainers:\n- name: app\n  image: busybox",
        [
            'pod.yaml:7: spec.containers[0].name: "app" is '
            "already the name of spec.initContainers[0]"
        ],
    ),
    (
        "initContainers:\n- name: init\n  image: busybox\n  ports: [{containerPort: 80}]\n"
        "- name: init2\n  image: busybox\n  ports: [{containerPort: 80}]",
        [
            "pod.yaml:15: spec.initContainers[1].ports[0].containerPort: 80/TCP "
            "is already declared by spec.initContainers[0].ports[0]"
        ],
    ),
    (
        "hostNetwork: true\ninitContainers:\n- name: i\n  image: busybox\n  ports:\n"
        "  - {containerPort: 80, hostPort: 8080}",
        [
            "pod.yaml:14: spec.initContainers[0].ports[0].hostPort: must "
            "equal containerPort when hostNetwork is true"
        ],
    ),
]


@pytest.mark.parametrize(("fields", "expected"), SPEC_ERRORS, ids=short_id)
def test_spec_errors(fields: str, expected: list[str]) -> None:
    assert problems(with_spec(fields)) == expected


VOLUME_ERRORS = [
    (
        "- name: v\n  configMap: {name: x}",
        [
            "pod.yaml:11: spec.volumes[0].configMap: unsupported volume "
            "type (podunit supports hostPath and emptyDir)"
        ],
    ),
    (
        "- name: v\n  persistentVolumeClaim: {claimName: x}",
        [
            "pod.yaml:11: spec.volumes[0].persistentVolumeClaim: unsupported "
            "volume type (podunit supports hostPath and emptyDir)"
        ],
    ),
    ("- name: v", ["pod.yaml:10: spec.volumes[0]: needs a source: hostPath or emptyDir"]),
    (
        "- name: v\n  emptyDir: {}\n  hostPath: {path: /x}",
        ["pod.yaml:12: spec.volumes[0].hostPath: a volume has one source, and emptyDir is set too"],
    ),
    (
        "- {name: v, emptyDir: {}}\n- {name: v, emptyDir: {}}",
        ['pod.yaml:11: spec.volumes[1].name: "v" is already the name of spec.volumes[0]'],
    ),
    (
        "- {name: Data, emptyDir: {}}",
        [
            'pod.yaml:10: spec.volumes[0].name: "Data" is not a valid DNS-1123 label: at most '
            "63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ],
    ),
    ("- hostPath: {path: /x}", ["pod.yaml:10: spec.volumes[0].name: required field is missing"]),
    (
        "- name: v\n  hostPath: {}",
        ["pod.yaml:11: spec.volumes[0].hostPath.path: required field is missing"],
    ),
    (
        "- name: v\n  hostPath: {path: srv}",
        ['pod.yaml:11: spec.volumes[0].hostPath.path: "srv" is not an absolute path'],
    ),
    (
        "- name: v\n  hostPath: {path: /srv/../etc}",
        [
            "pod.yaml:11: spec.volumes[0].hostPath.path: "
            "\"/srv/../etc\" must not contain a '..' component"
        ],
    ),
    (
        "- name: v\n  hostPath: {path: /srv, type: Dir}",
        [
            'pod.yaml:11: spec.volumes[0].hostPath.type: "Dir" is not one '
            'of "", "DirectoryOrCreate", "Directory", "FileOrCreate", '
            '"File", "Socket", "CharDevice", "BlockDevice"'
        ],
    ),
    (
        "- name: v\n  emptyDir: {medium: HugePages}",
        ['pod.yaml:11: spec.volumes[0].emptyDir.medium: "HugePages" is not one of "", "Memory"'],
    ),
    (
        "- name: v\n  emptyDir: {sizeLimit: 1Gx}",
        ['pod.yaml:11: spec.volumes[0].emptyDir.sizeLimit: "1Gx" is not a quantity'],
    ),
    (
        "- name: v\n  emptyDir: {sizeLimit: 0}",
        ["pod.yaml:11: spec.volumes[0].emptyDir.sizeLimit: must be greater than zero"],
    ),
]


@pytest.mark.parametrize(("volumes", "expected"), VOLUME_ERRORS, ids=short_id)
def test_volume_errors(volumes: str, expected: list[str]) -> None:
    assert problems(with_spec("volumes:\n" + volumes)) == expected


def metadata_pod(metadata: str) -> str:
    """A pod whose metadata fields start at line 4."""
    return (
        "apiVersion: v1\nkind: Pod\nmetadata:\n"
        + textwrap.indent(textwrap.dedent(metadata) + "\n", "  ")
        + "spec:\n  containers: [{name: app, image: busybox}]\n"
    )


METADATA_ERRORS = [
    ("labels: {}", ["pod.yaml:4: metadata.name: required field is missing"]),
    (
        "name: Web_1",
        [
            'pod.yaml:4: metadata.name: "Web_1" is not a valid DNS-1123 subdomain: lowercase '
            "letters, digits, '-' and '.', starting and ending with a letter or digit"
        ],
    ),
    (
        "name: " + "a" * 64,
        [
            f'pod.yaml:4: metadata.name: "{"a" * 64}" is longer than 63 characters:'
            " podunit needs pod names to fit a hostname and a systemd unit name"
        ],
    ),
    (
        "name: 42",
        [
            "pod.yaml:4: metadata.name: expected a string, got an "
            'integer; quote "42" to make it a string'
        ],
    ),
    (
        "name: web\nnamespace: Prod",
        [
            'pod.yaml:5: metadata.namespace: "Prod" is not a valid DNS-1123 label: at most 63 '
            "lowercase letters, digits and '-', starting and ending with a letter or digit"
        ],
    ),
    (
        "name: web\nuid: 1234",
        ["pod.yaml:5: metadata.uid: unsupported field (podunit does not support it yet)"],
    ),
    (
        "name: web\ngenerateName: web-",
        ["pod.yaml:5: metadata.generateName: unsupported field (podunit does not support it yet)"],
    ),
    (
        "name: web\ncreationTimestamp: null",
        [
            "pod.yaml:5: metadata.creationTimestamp: unsupported "
            "field (podunit does not support it yet)"
        ],
    ),
    (
        "name: web\nlabels:\n  a b: x\n  Example.com/x: y\n  ok: -bad-\n"
        "  version: 1\n  enabled: yes",
        [
            'pod.yaml:6: metadata.labels.a b: "a b" is not a valid key: an optional '
            "DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' "
            "and '.', starting and ending with a letter or digit",
            'pod.yaml:7: metadata.labels.Example.com/x: "Example.com/x" is not a valid key: '
            "an optional DNS subdomain prefix and '/', then at most 63 letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit",
            'pod.yaml:8: metadata.labels.ok: "-bad-" is not a valid label '
            "value: empty, or at most 63 letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit",
            "pod.yaml:9: metadata.labels.version: expected a string, "
            'got an integer; quote "1" to make it a string',
            "pod.yaml:10: metadata.labels.enabled: expected a string, "
            'got a boolean; quote "yes" to make it a string',
        ],
    ),
    (
        "name: web\nlabels: {x: " + "v" * 64 + "}",
        [
            f'pod.yaml:5: metadata.labels.x: "{"v" * 64}" is not a valid label'
            " value: empty, or at most 63 letters, digits, '-', '_' and "
            "'.', starting and ending with a letter or digit"
        ],
    ),
    (
        "name: web\nannotations: {a: 1}",
        [
            "pod.yaml:5: metadata.annotations.a: expected a string, "
            'got an integer; quote "1" to make it a string'
        ],
    ),
    (
        "name: web\nannotations: {big: " + "x" * (256 * 1024) + "}",
        ["pod.yaml:5: metadata.annotations: 262147 bytes in total, more than the 262144 allowed"],
    ),
]


@pytest.mark.parametrize(("metadata", "expected"), METADATA_ERRORS, ids=short_id)
def test_metadata_errors(metadata: str, expected: list[str]) -> None:
    assert problems(metadata_pod(metadata)) == expected


def test_label_keys_with_prefixes_and_empty_values_are_valid() -> None:
    [pod] = load(metadata_pod("name: web.example\nlabels: {a.b/c_d: '', x: A-1.b_2}"))
    assert pod.metadata.labels == {"a.b/c_d": "", "x": "A-1.b_2"}


def test_image_reference_errors_carry_the_reference_message() -> None:
    assert problems(MINIMAL.replace("image: busybox", "image: Busy Box")) == [
        'pod.yaml:8: spec.containers[0].image: "Busy Box" is not a valid image reference'
    ]
    assert problems(MINIMAL.replace("image: busybox", "image: foo:/x")) == [
        'pod.yaml:8: spec.containers[0].image: unknown transport "foo" '
        "(known: docker, oci, oci-archive, docker-archive)"
    ]


def test_missing_required_fields_point_at_the_parent_mapping() -> None:
    assert problems(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: app\n"
    ) == ["pod.yaml:6: spec.containers[0].image: required field is missing"]
    assert problems(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  hostIPC: true\n"
    ) == ["pod.yaml:5: spec.containers: required field is missing"]
    assert problems("kind: Pod\nmetadata: {name: web}\n") == [
        "pod.yaml:1: apiVersion: required field is missing",
        "pod.yaml:1: spec: required field is missing",
    ]


def test_containers_must_not_be_empty() -> None:
    assert problems(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: []\n"
    ) == ["pod.yaml:5: spec.containers: must list at least one container"]


def test_other_kinds_get_one_message() -> None:
    deployment = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1}\n"
    )
    assert problems(deployment) == ['pod.yaml:1: apiVersion: must be "v1", not "apps/v1"']
    service = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
    assert problems(service) == ['pod.yaml:2: kind: must be "Pod", not "Service"']


def test_status_is_refused() -> None:
    assert problems(MINIMAL + "status: {phase: Running}\n") == [
        "pod.yaml:9: status: must not be set in a manifest"
    ]


def test_duplicate_keys() -> None:
    assert problems(MINIMAL + "    image: nginx\n") == [
        "pod.yaml:9: spec.containers[0].image: duplicate key (first at line 8)"
    ]


def test_duplicate_pod_names_across_documents() -> None:
    assert problems(MINIMAL + "---\n" + MINIMAL) == [
        'pod.yaml:13: metadata.name: "web" is already the name of the pod at line 1'
    ]


def test_custom_yaml_tags_are_refused() -> None:
    assert problems(MINIMAL.replace("image: busybox", "image: !env IMAGE")) == [
        'pod.yaml:8: spec.containers[0].image: unsupported YAML tag "!env"'
    ]


def test_standard_tags_are_fine() -> None:
    [pod] = load(with_container("args: [!!str 10]\n"))
    assert pod.spec.containers[0].args == ("10",)


def test_yaml_syntax_error_has_its_line_and_no_field() -> None:
    [error] = problems(MINIMAL + "  volumes: [\n    - x\n")
    assert error.startswith("pod.yaml:10: invalid YAML: ")


def test_mapping_keys_must_be_strings() -> None:
    assert problems(with_spec("1: x\n")) == [
        'pod.yaml:9: spec.1: expected a string, got an integer; quote "1" to make it a string'
    ]


def test_documents_must_be_mappings() -> None:
    assert problems("- a\n- b\n") == ["pod.yaml:1: expected a mapping, got a list"]


def test_empty_file_has_no_pod() -> None:
    assert problems("# nothing here\n") == ["pod.yaml: no Pod in this manifest"]


def test_every_error_of_every_document_is_reported() -> None:
    text = (
        MINIMAL.replace("name: web", "name: Web")  # line 4
        + "    foo: 1\n"  # line 9
        + "---\n"
        + MINIMAL.replace("image: busybox", "image: busybox\n    tty: true")  # lines 11-19
        + "---\n"
        + "apiVersion: v1\nkind: Pod\nmetadata: {name: [}\n"  # syntax error on line 23
    )
    *found, syntax = problems(text)
    assert found == [
        'pod.yaml:4: metadata.name: "Web" is not a valid DNS-1123 subdomain: lowercase '
        "letters, digits, '-' and '.', starting and ending with a letter or digit",
        "pod.yaml:9: spec.containers[0].foo: unknown field",
        "pod.yaml:19: spec.containers[0].tty: unsupported field (podunit does not support it yet)",
    ]
    # libyaml and PyYAML word the problem differently; the line is what matters.
    assert syntax.startswith("pod.yaml:23: invalid YAML: while parsing a flow node: ")


def test_several_errors_in_one_container() -> None:
    assert problems(with_container("workingDir: rel\nstdin: true\nargs: x\n")) == [
        'pod.yaml:9: spec.containers[0].workingDir: "rel" is not an absolute path',
        "pod.yaml:10: spec.containers[0].stdin: unsupported "
        "field (podunit does not support it yet)",
        "pod.yaml:11: spec.containers[0].args: expected a list, got a string",
    ]


def test_manifest_error_carries_field_errors() -> None:
    with pytest.raises(ManifestError) as info:
        parse_pods(MINIMAL.replace("busybox", "Busybox"), "x.yaml")
    assert info.value.errors == [
        FieldError(
            "x.yaml", 8, "spec.containers[0].image", '"Busybox" is not a valid image reference'
        )
    ]
    assert info.value.exit_code == 2
    assert (
        str(info.value)
        == 'x.yaml:8: spec.containers[0].image: "Busybox" is not a valid image reference'
    )


def test_run_as_non_root_across_levels() -> None:
    pod_level = "securityContext: {runAsNonRoot: true}\n"
    assert problems(with_container("securityContext: {runAsUser: 0}\n") + "  " + pod_level) == [
        "pod.yaml:9: spec.containers[0].securityContext.runAsUser: is 0 "
        "but runAsNonRoot is true (in spec.securityContext)"
    ]
    pod_user = "  securityContext: {runAsUser: 0}\n"
    assert problems(with_container("securityContext: {runAsNonRoot: true}\n") + pod_user) == [
        "pod.yaml:9: spec.containers[0].securityContext.runAsNonRoot: "
        "is true but spec.securityContext.runAsUser is 0"
    ]
    # The kubelet decides per container: one that overrides either half is fine.
    both = "  securityContext: {runAsUser: 0, runAsNonRoot: true}\n"
    assert load(with_container("securityContext: {runAsUser: 1}\n") + both)
    assert load(with_container("securityContext: {runAsNonRoot: false}\n") + both)
    assert problems(MINIMAL + both) == [
        "pod.yaml:9: spec.securityContext.runAsUser: is 0 but runAsNonRoot is true"
    ]


def test_allow_privilege_escalation_false_with_sys_admin() -> None:
    fields = (
        "securityContext:\n  allowPrivilegeEscalation: false\n  capabilities: {add: [SYS_ADMIN]}\n"
    )
    assert problems(with_container(fields)) == [
        "pod.yaml:10: "
        "spec.containers[0].securityContext.allowPrivilegeEscalation: "
        "cannot be false when capabilities.add "
        "grants SYS_ADMIN"
    ]


def test_too_big_file_is_refused() -> None:
    path = write(MINIMAL + "#" * MAX_MANIFEST_BYTES + "\n")
    with pytest.raises(ManifestError) as info:
        load_pods(path)
    assert str(info.value) == "pod.yaml: larger than 1048576 bytes (1 MiB): refused"
    with pytest.raises(ManifestError, match="1 MiB"):
        parse_pods(MINIMAL + "#" * MAX_MANIFEST_BYTES, "pod.yaml")


def test_unreadable_and_undecodable_files() -> None:
    with pytest.raises(
        ManifestError, match=r"^missing\.yaml: cannot read: No such file or directory$"
    ):
        load_pods("missing.yaml")
    Path("bad.yaml").write_bytes(MINIMAL.encode() + b"  hostname: \xff\n")
    with pytest.raises(ManifestError, match=r"^bad\.yaml:9: not valid UTF-8$"):
        load_pods("bad.yaml")


def test_deep_nesting_is_refused_before_composing() -> None:
    # libyaml's composer would crash the interpreter on this, not raise.
    text = MINIMAL + "  x: " + "[" * 100_000 + "]" * 100_000 + "\n"
    assert problems(text) == ["pod.yaml:9: nested deeper than 100 levels"]


def test_alias_expansion_is_bounded() -> None:
    env = "[" + ", ".join(f"{{name: V{i}, value: x}}" for i in range(2000)) + "]"
    lines = [
        "apiVersion: v1",
        "kind: Pod",
        "metadata: {name: web}",
        "spec:",
        "  containers:",
        f"  - &c {{name: app, image: busybox, env: &e {env}}}",
    ]
    lines += [f"  - {{name: c{i}, image: busybox, env: *e}}" for i in range(1000)]
    errors = problems("\n".join(lines) + "\n")
    assert errors == ["pod.yaml: YAML aliases expand to more nodes than any pod needs: refused"]


def test_host_aliases_and_dns_config_are_parsed() -> None:
    text = with_spec(
        """\
        hostAliases:
        - ip: 10.1.2.3
          hostnames: [db, db.example]
        - {ip: "fd00::1", hostnames: [v6]}
        dnsPolicy: None
        dnsConfig:
          nameservers: [192.0.2.53]
          searches: [svc.example, example.]
          options:
          - {name: ndots, value: "2"}
          - name: edns0
        """
    )
    pod = load(text)[0]
    assert pod.spec.host_aliases == (
        spec.HostAlias("10.1.2.3", ("db", "db.example")),
        spec.HostAlias("fd00::1", ("v6",)),
    )
    assert pod.spec.dns_policy == "None"
    assert pod.spec.dns_config == spec.DNSConfig(
        ("192.0.2.53",),
        ("svc.example", "example."),
        (spec.DNSOption("ndots", "2"), spec.DNSOption("edns0")),
    )


def test_dns_defaults_follow_kubernetes() -> None:
    pod = load(MINIMAL)[0]
    assert pod.spec.dns_policy == "ClusterFirst"
    assert pod.spec.dns_config is None and pod.spec.host_aliases == ()
