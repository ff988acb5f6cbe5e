"""One reconcile step for one EtcdCluster: observe, plan, make the objects, take one action, report.

Nothing is carried from one step to the next except connections: the decision is taken afresh
from the live objects and the live member list every time (see planner.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdstore import errors as etcd_errors
from etcdstore.client import TLSConfig
from etcdstore.errors import EtcdError

from etcdoperator import crd, events, failpoints, gate, metrics, planner, tlsplan
from etcdoperator.build import bootstrap as bootstrap_build
from etcdoperator.build import restorejob as restore_build
from etcdoperator.build.common import Images
from etcdoperator.build.disruption import pod_disruption_budget
from etcdoperator.build.secrets import tls_secret
from etcdoperator.build.services import client_service, peer_service
from etcdoperator.build.statefulset import GATE_CONTAINER, MEMBER_CONTAINER, statefulset, tls_secrets
from etcdoperator.kube import (
    CONFIGMAPS,
    ETCDCLUSTERS,
    JOBS,
    PODS,
    PVCS,
    REPLICAS_MANAGER,
    SECRETS,
    STATEFULSETS,
    ApiError,
    Kube,
    fields_owned,
)
from etcdoperator.members import Credentials, Members
from etcdoperator.model import BootstrapState, EtcdView, KubeView, Observed, PodState, PVCState
from etcdoperator.naming import (
    ANNOTATION_MEMBER_ID,
    ANNOTATION_MEMBERSHIP_TIME,
    ANNOTATION_TLS_HASH,
    LABEL_CLUSTER_UID,
    LABEL_ROLE,
    ClusterRef,
)
from etcdoperator.spec import ClusterSpec, parse_cluster_spec, parse_quantity, validate_cluster_spec
from etcdoperator.status import build_status

log = logging.getLogger(__name__)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Settings:
    images: Images
    secrets_dir: Path
    planner: planner.PlannerConfig = field(default_factory=planner.PlannerConfig)
    progress_deadline: float = 600.0


@dataclass(frozen=True, slots=True)
class StepResult:
    plan: planner.Plan
    error: str | None = None

    @property
    def busy(self) -> bool:
        """True when the next step should follow quickly (something was just changed)."""
        return self.error is None and self.plan.action.mutating


def _strip(value: Any) -> Any:
    """Compare claim templates without the fields an API server adds (status, volumeMode...)."""
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, dict):
        return {
            k: _strip(v) for k, v in value.items() if k not in ("status", "volumeMode", "creationTimestamp")
        }
    return value


def _b64(data: Mapping[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


class ClusterReconciler:
    def __init__(self, kube: Kube, settings: Settings, ref: ClusterRef) -> None:
        self.kube = kube
        self.settings = settings
        self.ref = ref
        self._members: Members | None = None
        self._members_key: object = None
        self._warned: set[str] = set()

    async def close(self) -> None:
        if self._members is not None:
            await self._members.close()

    # ---------------------------------------------------------------------------------------
    async def step(self, body: Mapping[str, Any]) -> StepResult:
        started = time.monotonic()
        ref = self.ref
        raw_spec = body.get("spec") or {}
        try:
            spec_errors = validate_cluster_spec(raw_spec)
            spec = parse_cluster_spec(raw_spec)
        except (
            KeyError,
            TypeError,
            ValueError,
        ) as e:  # only an API server without the CRD schema lets these in
            spec_errors, spec = [f"malformed spec: {type(e).__name__}: {e}"], ClusterSpec()
        generation = int(body.get("metadata", {}).get("generation") or 0)
        prev_status = body.get("status") or {}
        obs: Observed | None = None
        plan: planner.Plan | None = None
        try:
            tls_contents = await self._ensure_tls(spec, rolled=False)
            members = await self._members_for(spec, tls_contents)
            t_tls = time.monotonic()
            kube_view, sts = await self._observe_kube(spec)
            t_kube = time.monotonic()
            etcd_view = await self._observe_etcd(members, kube_view)
            t_etcd = time.monotonic()
            obs = Observed(
                spec=spec,
                kube=kube_view,
                etcd=etcd_view,
                spec_errors=tuple(spec_errors),
                generation=generation,
            )
            plan = planner.plan(obs, ref, self.settings.planner)
            tls_hash = tlsplan.tls_hash([tls_contents.get(n) for n in self._mounted_secrets(spec)])
            if isinstance(plan.action, planner.Converged) and spec.tls.auto:
                rolled = kube_view.statefulset_synced and kube_view.template_tls_hash == tls_hash
                if rolled:
                    tls_contents = await self._ensure_tls(spec, rolled=True)
                    tls_hash = tlsplan.tls_hash([tls_contents.get(n) for n in self._mounted_secrets(spec)])
            if not spec_errors and not spec.paused and not kube_view.foreign:
                await self._ensure_objects(spec, plan, sts, etcd_view, tls_hash)
                await self._ensure_roles(kube_view, etcd_view)
                t_objects = time.monotonic()
                await self._act(body, spec, plan, members, etcd_view, kube_view)
                if spec.auth is not None and isinstance(plan.action, planner.Converged):
                    await self._ensure_auth(body, members)
                log.debug(
                    "[%s/%s] step %s: tls %.2fs kube %.2fs etcd %.2fs objects %.2fs act %.2fs",
                    ref.namespace,
                    ref.name,
                    plan.action.kind,
                    t_tls - started,
                    t_kube - t_tls,
                    t_etcd - t_kube,
                    t_objects - t_etcd,
                    time.monotonic() - t_objects,
                )
            error = None
        except (ApiError, EtcdError, OSError) as e:
            metrics.RECONCILE_ERRORS.labels(ref.namespace, ref.name).inc()
            log.warning("[%s/%s] reconcile step failed: %s", ref.namespace, ref.name, e)
            error = str(e)
            failed = plan.action.kind if plan is not None else "observe"
            plan = planner.Plan(
                action=planner.Wait("Error", error),
                message=f"{failed} failed: {error}",
                degraded=((plan.degraded if plan is not None else ()) + (("Error", error),)),
                version=plan.version if plan is not None else None,
            )
        metrics.RECONCILES.labels(ref.namespace, ref.name, plan.action.kind).inc()
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        if obs is not None:
            status = build_status(
                ref, obs, plan, prev_status, now=now_iso(), progress_deadline=self.settings.progress_deadline
            )
            self._record_member_metrics(obs.etcd)
        else:
            status = {"message": f"reconcile error: {error}"}
        try:
            await self.kube.patch(ETCDCLUSTERS, ref.namespace, ref.name, {"status": status}, sub="status")
        except ApiError as e:
            log.warning("[%s/%s] status update failed: %s", ref.namespace, ref.name, e)
        return StepResult(plan=plan, error=error)

    def _record_member_metrics(self, etcd: EtcdView) -> None:
        ref = self.ref
        for role in ("voter", "learner"):
            for healthy in (True, False):
                n = sum(1 for m in etcd.members if m.learner == (role == "learner") and m.healthy == healthy)
                metrics.MEMBERS.labels(ref.namespace, ref.name, role, str(healthy).lower()).set(n)

    # -- TLS ---------------------------------------------------------------------------------
    def _mounted_secrets(self, spec: ClusterSpec) -> list[str]:
        s = tls_secrets(self.ref, spec)
        return [n for n in (s.server, s.peer) if n]

    async def _ensure_tls(self, spec: ClusterSpec, *, rolled: bool) -> dict[str, dict[str, bytes]]:
        """Make/renew operator-managed certificates; return the contents of every TLS Secret in use."""
        ref = self.ref
        names = (
            {ref.ca_secret, ref.server_secret, ref.peer_secret, ref.client_secret} if spec.tls.auto else set()
        )
        s = tls_secrets(ref, spec)
        names |= {n for n in (s.server, s.peer, s.client) if n}
        existing: dict[str, tlsplan.SecretContent | None] = {}
        for name in sorted(names):
            obj = await self.kube.get(SECRETS, ref.namespace, name)
            existing[name] = (
                None
                if obj is None
                else tlsplan.SecretContent(
                    _b64(obj.get("data")), dict(obj.get("metadata", {}).get("annotations") or {})
                )
            )
        writes = tlsplan.plan_tls(ref, spec, existing, now=dt.datetime.now(dt.UTC), rolled=rolled)
        for w in writes:
            await self.kube.apply(tls_secret(ref, w))
            existing[w.name] = tlsplan.SecretContent(dict(w.data), dict(w.annotations))
            log.info("[%s/%s] TLS secret %s: %s", ref.namespace, ref.name, w.name, w.reason)
        return {k: dict(v.data) for k, v in existing.items() if v is not None}

    async def _members_for(self, spec: ClusterSpec, tls: Mapping[str, Mapping[str, bytes]]) -> Members:
        ref = self.ref
        tls_config = None
        if spec.tls.client.enabled:
            s = tls_secrets(ref, spec)
            d = Path(self.settings.secrets_dir) / ref.namespace / ref.name
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            client = tls.get(s.client or "") or {}
            server = tls.get(s.server or "") or {}
            ca = client.get("ca.crt") or server.get("ca.crt")
            files: dict[str, bytes] = {}
            if ca:
                files["ca.crt"] = ca
            if client.get("tls.crt") and client.get("tls.key"):
                files["tls.crt"], files["tls.key"] = client["tls.crt"], client["tls.key"]
            for fname, content in files.items():
                path = d / fname
                if not path.exists() or path.read_bytes() != content:
                    tmp = path.with_suffix(".tmp")
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(content)
                    os.replace(tmp, path)
            tls_config = TLSConfig(
                ca_file=str(d / "ca.crt") if "ca.crt" in files else None,
                cert_file=str(d / "tls.crt") if "tls.crt" in files else None,
                key_file=str(d / "tls.key") if "tls.key" in files else None,
            )
        password = None
        if spec.auth is not None:
            sec = await self.kube.get(SECRETS, ref.namespace, spec.auth.secret_name)
            password = _b64((sec or {}).get("data")).get(spec.auth.secret_key, b"").decode() or None
        # Files are rewritten in place when certificates rotate, so the file contents are part of the key.
        fingerprint = tuple(
            sorted((k, hash(v)) for k, v in (tls.get(tls_secrets(ref, spec).client or "") or {}).items())
        )
        creds = Credentials(
            client_tls=spec.tls.client.enabled,
            peer_tls=spec.tls.peer.enabled,
            tls=tls_config,
            user="root" if password else None,
            password=password,
        )
        key = (creds, fingerprint)
        if self._members is None or self._members_key != key:
            if self._members is not None:
                await self._members.close()
            self._members = Members(ref, creds)
            self._members_key = key
        return self._members

    # -- observation -------------------------------------------------------------------------
    def _foreign(self, obj: Mapping[str, Any] | None) -> bool:
        """Made for a previous EtcdCluster of this name (another UID), or on its way out."""
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return True
        owners = [o for o in meta.get("ownerReferences") or [] if o.get("kind") == crd.CLUSTER_KIND]
        return bool(self.ref.uid) and any(o.get("uid") != self.ref.uid for o in owners)

    async def _observe_kube(self, spec: ClusterSpec) -> tuple[KubeView, dict[str, Any] | None]:
        ref = self.ref
        ns = ref.namespace
        foreign: list[str] = []
        sts = await self.kube.get(STATEFULSETS, ns, ref.statefulset)
        if self._foreign(sts):
            foreign.append(f"statefulset/{ref.statefulset}")
            sts = None
        sts_uid = (sts or {}).get("metadata", {}).get("uid")
        pods: dict[int, PodState] = {}
        for p in await self.kube.list(PODS, ns, labels=ref.member_selector()):
            meta = p.get("metadata", {})
            k = ref.ordinal_of(meta.get("name", ""))
            if k is None:
                continue
            owner_uids = {
                o.get("uid") for o in meta.get("ownerReferences") or [] if o.get("kind") == "StatefulSet"
            }
            if owner_uids and sts_uid not in owner_uids:
                foreign.append(f"pod/{meta['name']}")  # a previous StatefulSet's pod, still terminating
                continue
            pods[k] = pod_state(k, p)
        pvcs: dict[int, PVCState] = {}
        retained: list[str] = []
        restored = False
        if not spec.storage.ephemeral:
            for c in await self.kube.list(PVCS, ns, labels=ref.member_selector()):
                meta = c.get("metadata", {})
                k = ref.pvc_ordinal(meta.get("name", ""))
                if k is None:
                    continue
                owner = (meta.get("labels") or {}).get(LABEL_CLUSTER_UID)
                if owner and ref.uid and owner != ref.uid and not meta.get("deletionTimestamp"):
                    retained.append(meta["name"])
                requested = (((c.get("spec") or {}).get("resources") or {}).get("requests") or {}).get(
                    "storage"
                )
                pvcs[k] = PVCState(
                    name=meta["name"],
                    ordinal=k,
                    uid=meta.get("uid", ""),
                    deleting=bool(meta.get("deletionTimestamp")),
                    member_id=(meta.get("annotations") or {}).get(ANNOTATION_MEMBER_ID),
                    size=parse_quantity(str(requested)) if requested else None,
                )
                if k == 0 and restore_build.ANNOTATION_RESTORED in (meta.get("annotations") or {}):
                    restored = True
        cm = await self.kube.get(CONFIGMAPS, ns, ref.bootstrap_configmap)
        if self._foreign(cm):
            foreign.append(f"configmap/{ref.bootstrap_configmap}")
            cm = None
        boot = None
        if cm is not None:
            data = cm.get("data") or {}
            tickets = {}
            for name, mid in gate.parse_tickets(data.get(bootstrap_build.KEY_JOIN)).items():
                k = ref.ordinal_of(name)
                if k is not None:
                    tickets[k] = mid
            boot = BootstrapState(
                state=data.get(bootstrap_build.KEY_STATE, "new"),
                initial_cluster=data.get(bootstrap_build.KEY_INITIAL_CLUSTER, ""),
                token=data.get(bootstrap_build.KEY_TOKEN, ""),
                joining=bootstrap_build.decode_joining(
                    (cm.get("metadata", {}).get("annotations") or {}).get(bootstrap_build.ANNOTATION_JOINING)
                ),
                tickets=tickets,
            )
        restore_job = None
        if spec.restore is not None:
            job = await self.kube.get(JOBS, ns, restore_build.restore_job_name(ref))
            if self._foreign(job):
                foreign.append(f"job/{restore_build.restore_job_name(ref)}")
            elif job is not None:
                conds = {
                    c.get("type"): c
                    for c in (job.get("status") or {}).get("conditions") or []
                    if c.get("status") == "True"
                }
                failed = conds.get("Failed")
                restore_job = (
                    "Complete"
                    if "Complete" in conds
                    else f"Failed: {failed.get('reason') or ''} {failed.get('message') or ''}".strip()
                    if failed
                    else "Running"
                )
        view = KubeView(
            statefulset_exists=sts is not None,
            statefulset_replicas=int((sts or {}).get("spec", {}).get("replicas") or 0),
            statefulset_synced=sts is None
            or int((sts.get("status") or {}).get("observedGeneration") or 0)
            >= int(sts.get("metadata", {}).get("generation") or 0),
            template_tls_hash=(
                (sts or {}).get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
            ).get(ANNOTATION_TLS_HASH, ""),
            update_revision=((sts or {}).get("status") or {}).get("updateRevision"),
            pods=pods,
            pvcs=pvcs,
            bootstrap=boot,
            foreign=tuple(foreign),
            retained=tuple(sorted(retained)),
            restore_job=restore_job,
            restored=restored,
        )
        return view, sts

    async def _observe_etcd(self, members: Members, kube: KubeView) -> EtcdView:
        ordinals = set(kube.pods) | set(range(kube.statefulset_replicas))
        if not ordinals:
            return EtcdView(reachable=False, error="no member pods yet")
        return await members.observe(ordinals)

    # -- objects -----------------------------------------------------------------------------
    async def _ensure_objects(
        self, spec: ClusterSpec, plan: planner.Plan, sts: dict[str, Any] | None, etcd: EtcdView, tls_hash: str
    ) -> None:
        ref = self.ref
        await self.kube.apply(peer_service(ref))
        await self.kube.apply(client_service(ref))
        voters = len(etcd.voters) if etcd.reachable else spec.replicas
        await self.kube.apply(pod_disruption_budget(ref, voters))
        version = plan.version.target if plan.version is not None else spec.version
        replicas = int((sts or {}).get("spec", {}).get("replicas") or 0)
        # spec.restore is done by a one-shot Job before the first member starts (RunRestore): the
        # members' template never refers to the backup volume or its credentials.
        desired = statefulset(
            ref,
            spec,
            images=self.settings.images,
            version=version,
            replicas=replicas,
            tls_hash=tls_hash if spec.tls.client.enabled or spec.tls.peer.enabled else "",
        )
        if sts is None:
            await self.kube.apply(desired)  # created with spec.replicas (0 while bootstrapping)...
            await self._scale(replicas)  # ...which then belongs to the replicas manager alone
            return
        if plan.version is not None and plan.version.refused:
            return  # keep the running template: the requested version change was refused
        # A StatefulSet's identity fields cannot change; keep the live ones (storage is immutable
        # in the CRD too, this covers API servers without CEL).
        live_spec = sts.get("spec") or {}
        for key in ("volumeClaimTemplates", "selector", "serviceName", "podManagementPolicy"):
            if key in live_spec and _strip(desired["spec"].get(key)) != _strip(live_spec.get(key)):
                desired["spec"][key] = live_spec[key]
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning(
                        "[%s/%s] not changing immutable StatefulSet field %s", ref.namespace, ref.name, key
                    )
        # spec.replicas is the planner's, applied by its own field manager (_scale): the template's
        # configuration leaves it out - once that manager owns it, else it would be dropped and
        # defaulted to 1 (a crash right after creation; a StatefulSet made by an older operator).
        if not fields_owned(sts, REPLICAS_MANAGER, ("spec", "replicas")):
            await self._scale(replicas)
        desired["spec"].pop("replicas", None)
        await self.kube.apply(desired)

    async def _ensure_roles(self, kube_view: KubeView, etcd: EtcdView) -> None:
        """Label member pods voter/learner: the client Service and the PodDisruptionBudget select voters."""
        for k, role in sorted(planner.pod_roles(etcd).items()):
            pod = kube_view.pods.get(k)
            if pod is not None and not pod.deleting and pod.role != role:
                await self.kube.patch(
                    PODS, self.ref.namespace, pod.name, {"metadata": {"labels": {LABEL_ROLE: role}}}
                )

    # -- actions -----------------------------------------------------------------------------
    async def _act(
        self,
        body: Mapping[str, Any],
        spec: ClusterSpec,
        plan: planner.Plan,
        members: Members,
        etcd: EtcdView,
        kube_view: KubeView,
    ) -> None:
        a = plan.action
        ref, ns = self.ref, self.ref.namespace
        if isinstance(a, (planner.Wait, planner.Converged)):
            return
        log.info("[%s/%s] %s: %s", ns, ref.name, a.kind, plan.message)
        if isinstance(a, planner.Bootstrap):
            seed = f"{ref.pod(0)}={members.peer_url(0)}"
            await self._write_bootstrap(state="new", initial_cluster=seed, joining={})
            await self._scale(1)
            await events.post(
                self.kube, body, "Bootstrapping", f"bootstrapping from seed member {ref.pod(0)}"
            )
            failpoints.hit("after-bootstrap")
        elif isinstance(a, planner.WriteBootstrap):
            await self._write_bootstrap(state="existing", initial_cluster=a.initial_cluster, joining={})
        elif isinstance(a, planner.MarkFormed):
            await self._patch_bootstrap(
                data={
                    bootstrap_build.KEY_STATE: "existing",
                    bootstrap_build.KEY_INITIAL_CLUSTER: a.initial_cluster,
                }
            )
            await events.post(self.kube, body, "ClusterFormed", "the seed member has formed the cluster")
        elif isinstance(a, planner.SyncInitialCluster):
            await self._patch_bootstrap(data={bootstrap_build.KEY_INITIAL_CLUSTER: a.initial_cluster})
        elif isinstance(a, planner.ScaleStatefulSet):
            await self._scale(a.replicas)
        elif isinstance(a, planner.AdoptHolder):
            res, name = (PODS, ref.pod(a.ordinal)) if spec.storage.ephemeral else (PVCS, ref.pvc(a.ordinal))
            await self.kube.patch(
                res, ns, name, {"metadata": {"annotations": {ANNOTATION_MEMBER_ID: a.member_id}}}
            )
        elif isinstance(a, planner.PrepareJoin):
            joining = dict(kube_view.bootstrap.joining) if kube_view.bootstrap else {}
            joining[a.ordinal] = a.stale_uids
            await self._patch_joining(joining)
        elif isinstance(a, planner.ClearJoining):
            boot = kube_view.bootstrap
            joining = dict(boot.joining) if boot else {}
            joining.pop(a.ordinal, None)
            tickets = dict(boot.tickets) if boot else {}
            tickets.pop(a.ordinal, None)
            await self._patch_joining(joining, tickets=tickets)
        elif isinstance(a, planner.IssueTicket):
            boot = kube_view.bootstrap
            joining = dict(boot.joining) if boot else {}
            joining[a.ordinal] = a.stale_uids
            tickets = dict(boot.tickets) if boot else {}
            tickets[a.ordinal] = a.member_id
            await self._patch_joining(joining, tickets=tickets)
        elif isinstance(a, planner.RevokeTicket):
            boot = kube_view.bootstrap
            tickets = dict(boot.tickets) if boot else {}
            tickets.pop(a.ordinal, None)
            await self._patch_joining(dict(boot.joining) if boot else {}, tickets=tickets)
        elif isinstance(a, planner.AddLearner):
            try:
                mid = await self._member_call("member-add", members.add_learner(a.ordinal))
            except EtcdError as e:
                if e == etcd_errors.UNHEALTHY:  # etcd wants every member connected for a while first
                    log.info(
                        "[%s/%s] etcd refuses MemberAdd for now (unhealthy cluster); retrying", ns, ref.name
                    )
                    return
                raise
            await events.post(
                self.kube, body, "MemberAdded", f"added {ref.pod(a.ordinal)} as learner {mid:x}"
            )
            failpoints.hit("after-member-add")
        elif isinstance(a, planner.DeleteStale):
            if a.pvc:
                await self.kube.delete(PVCS, ns, ref.pvc(a.ordinal))
            if a.pod:
                await self.kube.delete(PODS, ns, ref.pod(a.ordinal))
            await events.post(
                self.kube, body, "MemberReset", f"{ref.pod(a.ordinal)} restarts with an empty data dir"
            )
        elif isinstance(a, planner.Promote):
            try:
                await self._member_call("member-promote", members.promote(a.member_id))
            except EtcdError as e:
                if e == etcd_errors.LEARNER_NOT_READY:
                    log.info("[%s/%s] learner %x not ready yet", ns, ref.name, a.member_id)
                    return
                raise
            await events.post(
                self.kube, body, "MemberPromoted", f"promoted {ref.pod(a.ordinal)} ({a.member_id:x}) to voter"
            )
            failpoints.hit("after-promote")
        elif isinstance(a, planner.MoveLeader):
            leader = next(m for m in etcd.members if m.id == a.from_id)
            target = next(m for m in etcd.members if m.id == a.to_id)
            assert leader.ordinal is not None
            await self._member_call("move-leader", members.move_leader(leader.ordinal, a.to_id))
            await events.post(
                self.kube,
                body,
                "LeaderMoved",
                f"moved leadership from {ref.pod(leader.ordinal)} to {ref.pod(target.ordinal or 0)}",
            )
            failpoints.hit("after-move-leader")
        elif isinstance(a, planner.RemoveMember):
            await self._member_call("member-remove", members.remove(a.member_id))
            who = ref.pod(a.ordinal) if a.ordinal is not None else f"{a.member_id:x}"
            await events.post(
                self.kube,
                body,
                "MemberRemoved",
                f"removed member {who} ({a.member_id:x}): {a.why}",
                warning=a.why in ("DataLost", "Corrupted"),
            )
            failpoints.hit("after-member-remove")
        elif isinstance(a, planner.RecoverSpace):
            revision = await self._member_call("recover-space", members.recover_space(list(a.order), a.quota))
            await events.post(
                self.kube,
                body,
                "SpaceRecovered",
                f"NOSPACE alarm: compacted at revision {revision}, "
                f"defragmented {', '.join(ref.pod(k) for k in a.order)}, alarm disarmed",
                warning=True,
            )
        elif isinstance(a, planner.DeletePVC):
            await self.kube.delete(PVCS, ns, ref.pvc(a.ordinal))
            await events.post(
                self.kube, body, "VolumeDeleted", f"deleted volume {ref.pvc(a.ordinal)} of a removed member"
            )
            failpoints.hit("after-pvc-delete")
        elif isinstance(a, planner.ExpandVolume):
            await self.kube.patch(
                PVCS, ns, ref.pvc(a.ordinal), {"spec": {"resources": {"requests": {"storage": str(a.size)}}}}
            )
            await events.post(
                self.kube, body, "VolumeExpanding", f"growing {ref.pvc(a.ordinal)} to {a.size} bytes"
            )
        elif isinstance(a, planner.RestartMember):
            await self.kube.delete(PODS, ns, ref.pod(a.ordinal))
            await events.post(
                self.kube, body, "MemberRestarted", f"restarting {ref.pod(a.ordinal)} for a new template"
            )
        elif isinstance(a, planner.RunRestore):
            if await self.kube.get(PVCS, ns, ref.pvc(0)) is None:
                await self.kube.create(PVCS, ns, restore_build.seed_claim(ref, spec))
            version = plan.version.target if plan.version is not None else spec.version
            await self.kube.create(
                JOBS, ns, restore_build.restore_job(ref, spec, images=self.settings.images, version=version)
            )
            await events.post(
                self.kube,
                body,
                "Restoring",
                f"restoring {ref.pvc(0)} with Job {restore_build.restore_job_name(ref)}",
            )
        elif isinstance(a, planner.MarkRestored):
            assert spec.restore is not None
            await self.kube.patch(
                PVCS,
                ns,
                ref.pvc(0),
                {
                    "metadata": {
                        "annotations": {restore_build.ANNOTATION_RESTORED: spec.restore.source.describe()}
                    }
                },
            )
        elif isinstance(a, planner.DeleteRestoreJob):
            await self.kube.delete(JOBS, ns, restore_build.restore_job_name(ref))
        else:  # pragma: no cover - every action is handled above
            raise AssertionError(f"unhandled action {a!r}")  # noqa: TRY004

    async def _ensure_auth(self, body: Mapping[str, Any], members: Members) -> None:
        """Authentication on, with user root (role root) and the password from the Secret.

        A password changed in the Secret later is not applied (etcd needs the old one to change it):
        use `etcdctl user passwd root` and update the Secret to match."""
        password = members.creds.password
        if not password:
            raise OSError(f"root password Secret of {self.ref.name}: missing or empty")
        client = members.current()
        try:
            await client.authenticate("root", password)
            return  # enabled, and the password works
        except EtcdError as e:
            if e != etcd_errors.AUTH_NOT_ENABLED:
                raise
        try:
            await client.user_add("root", password)
        except EtcdError as e:
            if e != etcd_errors.USER_ALREADY_EXIST:
                raise
            await client.user_change_password("root", password)
        await client.user_grant_role("root", "root")
        await client.auth_enable()
        await events.post(self.kube, body, "AuthEnabled", "authentication enabled for user root")

    async def _member_call(self, op: str, coro: Any) -> Any:
        ref = self.ref
        try:
            result = await coro
        except EtcdError:
            metrics.MEMBER_OPERATIONS.labels(ref.namespace, ref.name, op, "error").inc()
            raise
        metrics.MEMBER_OPERATIONS.labels(ref.namespace, ref.name, op, "ok").inc()
        return result

    async def _scale(self, replicas: int) -> None:
        await self.kube.apply_replicas(
            STATEFULSETS,
            self.ref.namespace,
            self.ref.statefulset,
            replicas,
            api_version=STATEFULSETS.api_version,
            kind="StatefulSet",
        )

    async def _write_bootstrap(
        self, *, state: str, initial_cluster: str, joining: dict[int, frozenset[str]]
    ) -> None:
        ref = self.ref
        cm = bootstrap_build.bootstrap_configmap(
            ref,
            initial_cluster=initial_cluster,
            state=state,
            token=bootstrap_build.cluster_token(ref),
            joining=joining,
            updated=now_iso(),
        )
        existing = await self.kube.get(CONFIGMAPS, ref.namespace, ref.bootstrap_configmap)
        if existing is None:
            await self.kube.create(CONFIGMAPS, ref.namespace, cm)
        else:
            await self.kube.patch(
                CONFIGMAPS,
                ref.namespace,
                ref.bootstrap_configmap,
                {"metadata": {"annotations": cm["metadata"]["annotations"]}, "data": cm["data"]},
            )

    async def _patch_bootstrap(self, *, data: dict[str, str]) -> None:
        await self.kube.patch(
            CONFIGMAPS,
            self.ref.namespace,
            self.ref.bootstrap_configmap,
            {"data": data, "metadata": {"annotations": {ANNOTATION_MEMBERSHIP_TIME: now_iso()}}},
        )

    async def _patch_joining(
        self, joining: dict[int, frozenset[str]], *, tickets: dict[int, str] | None = None
    ) -> None:
        patch: dict[str, Any] = {
            "metadata": {
                "annotations": {bootstrap_build.ANNOTATION_JOINING: bootstrap_build.encode_joining(joining)}
            }
        }
        if tickets is not None:
            patch["data"] = {
                bootstrap_build.KEY_JOIN: gate.format_tickets(
                    {self.ref.pod(k): mid for k, mid in tickets.items()}
                )
            }
        await self.kube.patch(CONFIGMAPS, self.ref.namespace, self.ref.bootstrap_configmap, patch)


def pod_state(k: int, pod: Mapping[str, Any]) -> PodState:
    """What the planner needs to know about one member pod."""
    meta = pod.get("metadata", {})
    st = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
    cstats = st.get("containerStatuses") or []
    istats = st.get("initContainerStatuses") or []
    restarts = sum(int(c.get("restartCount") or 0) for c in cstats)
    waiting = next(
        (
            (c.get("state") or {}).get("waiting", {}).get("reason")
            for c in cstats + istats
            if (c.get("state") or {}).get("waiting")
        ),
        None,
    )
    member = next((c for c in cstats if c.get("name") == MEMBER_CONTAINER), cstats[0] if cstats else {})
    term = (
        (member.get("lastState") or {}).get("terminated")
        or (member.get("state") or {}).get("terminated")
        or {}
    )
    init_names = {c.get("name") for c in (pod.get("spec") or {}).get("initContainers") or []}
    return PodState(
        name=meta["name"],
        ordinal=k,
        uid=meta.get("uid", ""),
        phase=st.get("phase", "Pending"),
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        revision=(meta.get("labels") or {}).get("controller-revision-hash"),
        restarts=restarts,
        waiting_reason=waiting,
        member_id=(meta.get("annotations") or {}).get(ANNOTATION_MEMBER_ID),
        gated=GATE_CONTAINER in init_names,
        last_exit_reason=term.get("reason"),
        last_message=term.get("message"),
        role=(meta.get("labels") or {}).get(LABEL_ROLE),
    )
