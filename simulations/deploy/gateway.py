"""The Fleet-only gateway: an nginx reverse proxy that lets SuperNodes in and keeps operators' APIs local.

Flower 1.42 serves its Fleet API (SuperNodes), Control API (``flwr run``, ``flwr ls``, ``flwr supernode
register``) and Runtime API (its own ServerApp process) on one HTTP port, and the open-source build has no
account authentication for Control: whoever reaches that port with the CA certificate can submit an app that
then runs on the server and on every SuperNode. So the SuperLink listens on 127.0.0.1 only, and this gateway,
a stock nginx from the distribution's packages, is the one thing on the public address: it forwards the
paths under ``/v1/fleet/`` to the SuperLink (TLS on both legs when the federation uses TLS, the SuperLink's
certificate verified against the federation's CA) and answers every other path with 403.

Request and response bodies are streamed, not buffered to disk (model updates are megabytes; nginx's
workers may not be able to write its temp folders), and there is no body size limit beyond Flower's own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dpfl.simulations.deploy.certs import CertPaths
from dpfl.simulations.deploy.supervisor import LaunchError

FLEET_PREFIX = "/v1/fleet/"
INSTALL_HINT = "install nginx (Debian/Ubuntu: `apt-get install nginx-light`)"


def find_nginx() -> str:
    """The nginx executable, or a LaunchError naming the package to install."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise LaunchError(f"the Fleet-only gateway needs nginx, which is not installed: {INSTALL_HINT}")


def gateway_config(listen_host: str, listen_port: int, upstream_port: int, certs: CertPaths | None,
                   prefix: Path) -> str:
    """nginx.conf text: ``listen_host:listen_port`` forwards only the Fleet API to 127.0.0.1:upstream_port."""
    listen = f"[{listen_host}]:{listen_port}" if ":" in listen_host else f"{listen_host}:{listen_port}"
    scheme = "https" if certs else "http"
    tls_in = (f"        ssl_certificate {certs.server_cert};\n"
              f"        ssl_certificate_key {certs.server_key};\n"
              "        ssl_protocols TLSv1.2 TLSv1.3;\n") if certs else ""
    tls_out = ("            proxy_ssl_verify on;\n"
               f"            proxy_ssl_trusted_certificate {certs.ca_cert};\n"
               "            proxy_ssl_name localhost;\n"  # nginx matches DNS names only; dpfl's cert names localhost
               "            proxy_ssl_server_name on;\n") if certs else ""
    return f"""# written by dpfl: the Fleet-only gateway (see simulations/deploy/gateway.py)
worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix / "client_body"};
    proxy_temp_path {prefix / "proxy"};
    fastcgi_temp_path {prefix / "fastcgi"};
    uwsgi_temp_path {prefix / "uwsgi"};
    scgi_temp_path {prefix / "scgi"};
    server {{
        listen {listen}{" ssl" if certs else ""};
{tls_in}        client_max_body_size 0;
        location {FLEET_PREFIX} {{
            proxy_pass {scheme}://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
{tls_out}        }}
        location / {{
            return 403 "dpfl gateway: only the Fleet API ({FLEET_PREFIX}) is served here\\n";
        }}
    }}
}}
"""


def gateway_command(listen_host: str, listen_port: int, upstream_port: int, certs: CertPaths | None,
                    prefix: Path) -> list[str]:
    """Write the gateway's nginx.conf under ``prefix`` and return the command that runs nginx in the foreground."""
    nginx = find_nginx()
    prefix.mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o755)  # nginx's workers (user nobody when started as root) read below it
    conf = prefix / "nginx.conf"
    conf.write_text(gateway_config(listen_host, listen_port, upstream_port, certs, prefix))
    return [nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr"]
