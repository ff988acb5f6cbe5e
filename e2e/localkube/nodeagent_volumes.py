"""Pod volumes as directories, as the kubelet's volume plugins lay them out.

- secret / configMap / downwardAPI / projected: the kubelet's atomic writer (files in a timestamped
  `..YYYY_...` directory, `..data` a symlink to it swapped atomically on every update, one top-level symlink per
  entry), refreshed while the pod runs (Secret rotation reaches running pods); root directory mode 1777 as on
  the kubelet's tmpfs; file modes from defaultMode/items[].mode (default 0644).
- projected serviceAccountToken: a token from the TokenRequest API (bound to the pod), renewed at 80% of its
  lifetime; kube-root-ca.crt comes from its ConfigMap.
- emptyDir: a directory of mode 0777 (medium Memory is a plain directory too).
- persistentVolumeClaim: the bound PV's directory (hostPath or local path); volumes of the local provisioner
  are root-owned 0755 like a fresh CSI filesystem.
- hostPath: the path itself (type checks as the kubelet: Directory, DirectoryOrCreate, File, FileOrCreate, ...).

fsGroup is applied like the kubelet's SetVolumeOwnership: the tree gets group fsGroup, directories get the
setgid bit, read-write volumes g+rw (dirs g+rwx), read-only ones (secret, configMap, ...) g+r; with
fsGroupChangePolicy OnRootMismatch the walk is skipped when the root already has that group and mode. It is
applied to emptyDir, the API-backed volumes and the provisioner's PVCs (a CSI driver with fsGroupPolicy
File), never to hostPath (the kubelet does not either).
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .nodeagent_kube import ApiError, parse_quantity

if TYPE_CHECKING:
    from .nodeagent_pod import PodRuntime

Obj = dict[str, Any]
PROVISIONER = "localkube.etcdstore.io/local-dir"


class NotReady(Exception):
    """A volume cannot be set up yet (missing object, unbound claim): the pod waits (FailedMount)."""


# -- the atomic writer -------------------------------------------------------------------------------------
def atomic_write(root: Path, files: dict[str, tuple[bytes, int]], gid: int | None) -> bool:
    """Make `root` hold exactly `files` (relative path -> (content, mode)) the kubelet's way. True if changed."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o1777 | (stat.S_ISGID if gid is not None else 0))
    if gid is not None:
        os.chown(root, 0, gid)
    data_link = root / "..data"
    current = _read_tree(root / os.readlink(data_link)) if data_link.is_symlink() else None
    wanted = {
        rel: (content, mode | (0o440 if gid is not None else 0)) for rel, (content, mode) in files.items()
    }
    if current == wanted and gid == _gid_of(root / "..data"):
        return False
    ts = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    tsdir = root / ts
    tsdir.mkdir(mode=0o755)
    for rel, (content, mode) in wanted.items():
        path = tsdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if gid is not None:
            os.chown(path, 0, gid)
        os.chmod(path, mode)
    if gid is not None:
        for d in [tsdir, *[p for p in tsdir.rglob("*") if p.is_dir()]]:
            os.chown(d, 0, gid)
            os.chmod(d, 0o755 | stat.S_ISGID)
    tmp = root / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(ts, tmp)
    os.replace(tmp, data_link)
    tops = {rel.split("/", 1)[0] for rel in files}
    for top in tops:
        link = root / top
        if not link.is_symlink():
            os.symlink(f"..data/{top}", link)
    for entry in root.iterdir():
        if entry.name.startswith(".."):
            if entry.name not in ("..data", ts) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_symlink() and entry.name not in tops:
            entry.unlink()
    return True


def _gid_of(path: Path) -> int | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_gid if st.st_mode & stat.S_ISGID else None


def _read_tree(d: Path) -> dict[str, tuple[bytes, int]] | None:
    if not d.is_dir():
        return None
    out = {}
    for p in d.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(d))] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
    return out


# -- ownership (fsGroup) ------------------------------------------------------------------------------------
def apply_fs_group(root: Path, gid: int, *, read_only: bool, policy: str | None) -> None:
    st = root.stat()
    want_dir = 0o2070 if not read_only else 0o2050
    if policy == "OnRootMismatch" and st.st_gid == gid and (st.st_mode & want_dir) == want_dir:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *[os.path.join(dirpath, f) for f in filenames]]:
            try:
                lst = os.lstat(name)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(lst.st_mode):
                continue
            os.chown(name, lst.st_uid, gid)
            mode = stat.S_IMODE(lst.st_mode)
            if stat.S_ISDIR(lst.st_mode):
                mode |= stat.S_ISGID | (0o050 if read_only else 0o070)
            else:
                mode |= 0o040 if read_only else 0o060
            os.chmod(name, mode)


# -- sources ---------------------------------------------------------------------------------------------------
def _items(
    data: dict[str, bytes], items: list[Obj] | None, default_mode: int, optional: bool, what: str
) -> dict[str, tuple[bytes, int]]:
    if not items:
        return {k: (v, default_mode) for k, v in data.items()}
    out = {}
    for it in items:
        if it["key"] not in data:
            if optional:
                continue
            raise NotReady(f"{what}: key {it['key']!r} not found")
        out[it["path"]] = (data[it["key"]], int(it.get("mode", default_mode)))
    return out


def field_value(pod: Obj, path: str, pod_ip: str, host_ip: str) -> str:
    meta = pod["metadata"]
    if path.startswith(("metadata.labels[", "metadata.annotations[")):
        which = "labels" if ".labels[" in path else "annotations"
        key = path[path.index("[") + 1 : -1].strip("'\"")
        return (meta.get(which) or {}).get(key, "")
    if path in ("metadata.labels", "metadata.annotations"):
        d = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{json.dumps(v)[1:-1]}"' for k, v in sorted(d.items()))
    return {
        "metadata.name": meta["name"],
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }.get(path, "")


def resource_value(
    pod: Obj, ref: Obj, node_allocatable: dict[str, str], default_container: str | None
) -> str:
    cname = ref.get("containerName") or default_container
    container = next(
        (c for c in pod["spec"]["containers"] if c["name"] == cname), pod["spec"]["containers"][0]
    )
    kind, _, res = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(res)
    if value is None and kind == "requests":
        value = ((container.get("resources") or {}).get("limits") or {}).get(res)
    if value is None:
        value = node_allocatable.get(res, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    q = parse_quantity(value) / (divisor if divisor else 1)
    return str(math.ceil(q))  # rounded up, as the kubelet does


class Volumes:
    """The volumes of one pod: set up (waiting for what is missing), refreshed, torn down."""

    def __init__(self, rt: PodRuntime) -> None:
        self.rt = rt
        self.paths: dict[str, Path] = {}
        self.read_only: dict[str, bool] = {}
        self._tokens: dict[str, tuple[float, float, bytes]] = {}  # key -> (issued, expires, token)

    @property
    def fs_group(self) -> int | None:
        g = (self.rt.pod["spec"].get("securityContext") or {}).get("fsGroup")
        return int(g) if g is not None else None

    async def _get(self, kind: str, name: str, optional: bool) -> Obj | None:
        try:
            return await self.rt.kube.get(f"/api/v1/namespaces/{self.rt.namespace}/{kind}/{name}")
        except ApiError as e:
            if e.status == 404 and optional:
                return None
            if e.status in (403, 404):
                raise NotReady(f"{kind[:-1]} {name!r} not found") from None
            raise

    async def _data(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        obj = await self._get(kind, name, optional)
        if obj is None:
            return None
        if kind == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return out

    async def _token(self, key: str, src: Obj) -> bytes:
        import time

        now = time.time()
        cached = self._tokens.get(key)
        if cached and now < cached[0] + 0.8 * (cached[1] - cached[0]):
            return cached[2]
        pod = self.rt.pod
        sa = pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": int(src.get("expirationSeconds", 3607)),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.rt.name,
                    "uid": self.rt.uid,
                },
            },
        }
        if src.get("audience"):
            body["spec"]["audiences"] = [src["audience"]]
        try:
            out = await self.rt.kube.create(
                f"/api/v1/namespaces/{self.rt.namespace}/serviceaccounts/{sa}/token", body
            )
        except ApiError as e:
            raise NotReady(f"token for serviceaccount {sa!r}: {e}") from None
        token = out["status"]["token"].encode()
        exp = out["status"].get("expirationTimestamp")
        expires = (
            datetime.datetime.strptime(exp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
            if exp
            else now + 3600
        )
        self._tokens[key] = (now, expires, token)
        return token

    async def _projected(self, vname: str, proj: Obj) -> dict[str, tuple[bytes, int]]:
        mode_default = int(proj.get("defaultMode", 0o644))
        files: dict[str, tuple[bytes, int]] = {}
        for i, src in enumerate(proj.get("sources") or []):
            if "secret" in src or "configMap" in src:
                kind = "secrets" if "secret" in src else "configmaps"
                s = src.get("secret") or src.get("configMap")
                data = await self._data(kind, s["name"], bool(s.get("optional")))
                if data is not None:
                    files.update(
                        _items(data, s.get("items"), mode_default, bool(s.get("optional")), s["name"])
                    )
            elif "downwardAPI" in src:
                files.update(self._downward(src["downwardAPI"].get("items") or [], mode_default))
            elif "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                files[t["path"]] = (await self._token(f"{vname}/{i}", t), mode_default)
            else:
                raise NotReady(f"projected source {sorted(src)} is not supported by the localkube node agent")
        return files

    def _downward(self, items: list[Obj], mode_default: int) -> dict[str, tuple[bytes, int]]:
        out = {}
        for it in items:
            if "fieldRef" in it:
                v = field_value(self.rt.pod, it["fieldRef"]["fieldPath"], self.rt.ip, self.rt.node.ip)
            else:
                v = resource_value(self.rt.pod, it["resourceFieldRef"], self.rt.node.allocatable, None)
            out[it["path"]] = (v.encode(), int(it.get("mode", mode_default)))
        return out

    async def _claim_path(self, claim_name: str) -> tuple[Path, bool]:
        ns = self.rt.namespace
        try:
            pvc = await self.rt.kube.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim_name}")
        except ApiError as e:
            raise NotReady(f"persistentvolumeclaim {claim_name!r} not found ({e.status})") from None
        if pvc["metadata"].get("deletionTimestamp"):
            raise NotReady(f"persistentvolumeclaim {claim_name!r} is being deleted")
        pv_name = pvc["spec"].get("volumeName")
        if not pv_name or (pvc.get("status") or {}).get("phase") != "Bound":
            raise NotReady(f"persistentvolumeclaim {claim_name!r} is not bound")
        try:
            pv = await self.rt.kube.get(f"/api/v1/persistentvolumes/{pv_name}")
        except ApiError as e:
            raise NotReady(f"persistentvolume {pv_name!r}: {e}") from None
        spec = pv["spec"]
        path = (spec.get("hostPath") or spec.get("local") or {}).get("path")
        if not path:
            raise NotReady(f"persistentvolume {pv_name!r}: only hostPath/local volumes are supported")
        ours = (pv["metadata"].get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") == PROVISIONER
        p = Path(path)
        if not p.is_dir():
            raise NotReady(f"persistentvolume {pv_name!r}: directory {path} does not exist")
        return p, ours

    async def setup(self) -> None:
        """Make every volume (raises NotReady while something is missing)."""
        base = self.rt.dir / "volumes"
        fsg = self.fs_group
        policy = (self.rt.pod["spec"].get("securityContext") or {}).get("fsGroupChangePolicy")
        for v in self.rt.pod["spec"].get("volumes") or []:
            name = v["name"]
            if "emptyDir" in v:
                d = base / "empty-dir" / name
                if not d.exists():
                    d.mkdir(parents=True)
                    os.chmod(d, 0o777)
                if fsg is not None:
                    apply_fs_group(d, fsg, read_only=False, policy=policy)
                self.paths[name] = d
            elif "persistentVolumeClaim" in v:
                src = v["persistentVolumeClaim"]
                p, ours = await self._claim_path(src["claimName"])
                if fsg is not None and ours and not src.get("readOnly"):
                    apply_fs_group(p, fsg, read_only=False, policy=policy)
                self.paths[name] = p
                self.read_only[name] = bool(src.get("readOnly"))
            elif "hostPath" in v:
                hp = v["hostPath"]
                p = Path(hp["path"])
                typ = hp.get("type") or ""
                if typ == "DirectoryOrCreate":
                    p.mkdir(parents=True, exist_ok=True)
                elif typ == "FileOrCreate" and not p.exists():
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.touch()
                elif typ == "Directory" and not p.is_dir() or typ == "File" and not p.is_file():
                    raise NotReady(f"hostPath {p} is not a {typ}")
                self.paths[name] = p
            else:
                self.paths[name] = await self._refresh_one(v, base)
                self.read_only[name] = True

    async def _refresh_one(self, v: Obj, base: Path) -> Path:
        name, fsg = v["name"], self.fs_group
        if "secret" in v:
            s = v["secret"]
            data = await self._data("secrets", s["secretName"], bool(s.get("optional")))
            files = _items(
                data or {},
                s.get("items"),
                int(s.get("defaultMode", 0o644)),
                bool(s.get("optional")),
                s["secretName"],
            )
            d = base / "secret" / name
        elif "configMap" in v:
            s = v["configMap"]
            data = await self._data("configmaps", s["name"], bool(s.get("optional")))
            files = _items(
                data or {},
                s.get("items"),
                int(s.get("defaultMode", 0o644)),
                bool(s.get("optional")),
                s["name"],
            )
            d = base / "configmap" / name
        elif "downwardAPI" in v:
            s = v["downwardAPI"]
            files = self._downward(s.get("items") or [], int(s.get("defaultMode", 0o644)))
            d = base / "downward-api" / name
        elif "projected" in v:
            files = await self._projected(name, v["projected"])
            d = base / "projected" / name
        else:
            kinds = sorted(k for k in v if k != "name")
            raise NotReady(f"volume {name!r}: type {kinds} is not supported by the localkube node agent")
        atomic_write(d, files, fsg)
        return d

    async def refresh(self) -> None:
        """The kubelet's periodic sync: Secret/ConfigMap/downward/projected contents follow the API."""
        base = self.rt.dir / "volumes"
        for v in self.rt.pod["spec"].get("volumes") or []:
            if any(k in v for k in ("secret", "configMap", "downwardAPI", "projected")):
                try:
                    await self._refresh_one(v, base)
                except (NotReady, ApiError, OSError):
                    pass
