"""The part of the kubelet's HTTPS API (port 10250 on each node's InternalIP) that kube-apiserver proxies for
`kubectl logs`: GET /containerLogs/<ns>/<pod>/<container> (follow, previous, tailLines, limitBytes), plus
/healthz and /pods. Clients must present a certificate of the cluster CA (kube-apiserver's
--kubelet-client-certificate); any such client is allowed (a real kubelet asks the API with a
SubjectAccessReview). The serving certificate is self-signed: kube-apiserver does not verify it unless
--kubelet-certificate-authority is set. exec/attach/port-forward (SPDY/WebSocket streams) are not served.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from .nodeagent import NodeKubelet

PORT = 10250


def _serving_context(node: str, ip: str, client_ca: str | None, tmp: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node}@localkube")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(node), x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (tmp / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "tls.crt", tmp / "tls.key")
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _pod_dir(node: NodeKubelet, ns: str, pod: str) -> Path | None:
    live = [rt for rt in node.pods.values() if rt.namespace == ns and rt.name == pod]
    if live:
        return live[0].dir
    dirs = sorted((node.agent.root / "pods").glob(f"{ns}_{pod}_*"), key=lambda p: p.stat().st_mtime)
    return dirs[-1] if dirs else None


def _running(node: NodeKubelet, ns: str, pod: str, container: str) -> bool:
    for rt in node.pods.values():
        if rt.namespace == ns and rt.name == pod:
            return any(
                c.name == container and c.proc is not None and c.proc.returncode is None
                for c in rt.inits + rt.containers
            )
    return False


class KubeletServer:
    def __init__(self, node: NodeKubelet) -> None:
        self.node = node
        self._runner: web.AppRunner | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix=f"kubelet-{node.name}-")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", lambda _r: web.Response(text="ok"))
        app.router.add_get("/pods", self._pods)
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self._logs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        ctx = _serving_context(self.node.name, self.node.ip, self.node.kube.ca_file, Path(self._tmp.name))
        await web.TCPSite(self._runner, self.node.ip, PORT, ssl_context=ctx).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._tmp.cleanup()

    async def _pods(self, _req: web.Request) -> web.Response:
        items = [rt.pod for rt in self.node.pods.values()]
        return web.Response(
            text=json.dumps({"kind": "PodList", "apiVersion": "v1", "items": items}),
            content_type="application/json",
        )

    async def _logs(self, req: web.Request) -> web.StreamResponse:
        ns, pod, container = req.match_info["ns"], req.match_info["pod"], req.match_info["container"]
        d = _pod_dir(self.node, ns, pod)
        logs = (
            sorted((d / "logs" / container).glob("*.log"), key=lambda p: (p.stat().st_mtime, int(p.stem)))
            if d is not None and (d / "logs" / container).is_dir()
            else []
        )
        previous = req.query.get("previous") in ("true", "1")
        if not logs or (previous and len(logs) < 2):
            what = "previous terminated container" if previous else "container"
            return web.Response(status=404, text=f'{what} "{container}" in pod "{pod}" not found')
        path = logs[-2] if previous else logs[-1]
        data = path.read_bytes()
        if "tailLines" in req.query:
            n = int(req.query["tailLines"])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        if "limitBytes" in req.query:
            data = data[: int(req.query["limitBytes"])]
        follow = req.query.get("follow") in ("true", "1") and not previous
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(req)
        await resp.write(data)
        if follow:
            with open(path, "rb") as f:  # noqa: ASYNC230  (a local log file, read in small steps)
                f.seek(path.stat().st_size)
                while True:
                    chunk = f.read(65536)
                    if chunk:
                        await resp.write(chunk)
                    elif not _running(self.node, ns, pod, container):
                        break
                    else:
                        await asyncio.sleep(0.3)
        await resp.write_eof()
        return resp
