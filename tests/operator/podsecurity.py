"""The Pod Security Standards `restricted` profile (Kubernetes 1.25+, "latest"), as checks on a pod
spec: what the PodSecurity admission plugin enforces in a namespace labelled
`pod-security.kubernetes.io/enforce: restricted`. Each rule names the field it looks at, as in
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted).
"""

from __future__ import annotations

from typing import Any

_BASELINE_CAPS = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """Every way `pod_spec` breaks the restricted profile (empty: admitted)."""
    out: list[str] = []
    psc = pod_spec.get("securityContext") or {}
    containers = [("containers", c) for c in pod_spec.get("containers") or []]
    containers += [("initContainers", c) for c in pod_spec.get("initContainers") or []]
    containers += [("ephemeralContainers", c) for c in pod_spec.get("ephemeralContainers") or []]

    # -- baseline ----------------------------------------------------------------------------
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(f):
            out.append(f"spec.{f} must not be true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("securityContext.windowsOptions.hostProcess must not be true")
    for v in pod_spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if "hostPath" in kinds:
            out.append(f"volume {v['name']}: hostPath is forbidden")
        if not kinds <= _RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: type {sorted(kinds - _RESTRICTED_VOLUMES)} not allowed")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} is not safe")

    def selinux(ctx: dict[str, Any], where: str) -> None:
        se = ctx.get("seLinuxOptions") or {}
        if se.get("type", "") not in _SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"{where}: seLinuxOptions not allowed")

    def seccomp_type(ctx: dict[str, Any]) -> str | None:
        return (ctx.get("seccompProfile") or {}).get("type")

    selinux(psc, "pod")
    if seccomp_type(psc) not in (None, "RuntimeDefault", "Localhost"):
        out.append("pod: seccompProfile must be RuntimeDefault or Localhost")
    pod_nonroot = psc.get("runAsNonRoot")
    if psc.get("runAsUser") == 0:
        out.append("pod: runAsUser must not be 0")

    for kind, c in containers:
        where = f"{kind}[{c.get('name')}]"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: hostProcess")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{where}: hostPort {p['hostPort']}")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{where}: procMount must be Default")
        selinux(sc, where)
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if not added <= _BASELINE_CAPS:
            out.append(f"{where}: capabilities {sorted(added - _BASELINE_CAPS)} not allowed (baseline)")
        # -- restricted ----------------------------------------------------------------------
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        nonroot = sc.get("runAsNonRoot", pod_nonroot)
        if nonroot is not True:
            out.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser must not be 0")
        st = seccomp_type(sc) or seccomp_type(psc)
        if st not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile RuntimeDefault or Localhost is required (pod or container)")
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: capabilities must drop ALL")
        if not added <= {"NET_BIND_SERVICE"}:
            out.append(f"{where}: only NET_BIND_SERVICE may be added")
    return out
