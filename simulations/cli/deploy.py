"""``dpfl launch | server | client | certs``: the deployment engine's commands.

``launch`` runs a whole federation as real processes on this machine; ``server`` and ``client`` start
one side each for a federation across machines; ``certs`` makes the TLS material. Bad input exits 2
before any process starts, like every other dpfl command.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from dpfl.simulations.cli.common import EXIT_INTERRUPTED, EXIT_TERMINATED, console, error, fail
from dpfl.simulations.cli.enrol import add_client_flags, add_server_flags, client_approved_apps
from dpfl.simulations.config import ConfigError, RunConfig, add_config_flags, config_from_args, explicit_keys

if TYPE_CHECKING:
    from dpfl.simulations.deploy.launch import LaunchResult
    from dpfl.simulations.deploy.logs import LogPrinter
    from dpfl.simulations.deploy.supervisor import Supervisor

DEFAULT_SERVER_ADDRESS = "0.0.0.0:9092"
ACTIVATED_RE = re.compile(r"Activated node_id=(\d+)")
FLOWER_CONNECTION_ERROR = 305  # flwr.supercore.exit.ExitCode.SUPERNODE_CONNECTION_ERROR


def register(sub: argparse._SubParsersAction) -> None:
    """Add the deployment subcommands to the ``dpfl`` parser."""
    p = sub.add_parser("launch", help="run a federation as real processes here: 1 SuperLink + N SuperNodes",
                       description="Start flower-superlink and one flower-supernode per client on "
                                   "127.0.0.1, submit the run with `flwr run`, and stop every process at the "
                                   "end. Writes the same run directory as `dpfl simulate`, plus logs/ with "
                                   "every process's log.")
    p.add_argument("--clients", type=int, default=None, metavar="N",
                   help="number of SuperNodes (sets num-clients; default: num-clients)")
    p.add_argument("--privacy-policy", default=None, metavar="FILE|DIR",
                   help="a data owner's privacy policy (TOML) for every SuperNode, or a folder of "
                        "<client-id>.toml; each client reads it from its own node config")
    p.add_argument("--client-data", default=None, metavar="DIR_OR_GLOB",
                   help="one data owner per file or folder (its name, without suffix, is the client id): "
                        "each SuperNode trains on its own records only, read with the run's dataset kind "
                        "and schema; sets num-clients")
    _add_tls_flags(p, insecure_help="plaintext, and any SuperNode is accepted (default: TLS with this launch's own "
                                    "CA, a key per SuperNode enrolled before it starts, the Fleet-only gateway)")
    p.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                   help="stop everything if the run has not finished after this long (0: no limit)")
    p.add_argument("--startup-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long the SuperLink and SuperNodes may take to come up")
    p.add_argument("--client-threads", type=int, default=None, metavar="N",
                   help="torch threads per client process (default: cores / clients)")
    _add_last_flags(p, cmd_launch, verbose_help="show every line of every process (Flower's INFO lines included)")

    p = sub.add_parser("server", help="start a SuperLink for a federation across machines",
                       description="Start flower-superlink (Fleet, Control and Runtime APIs on one "
                                   "address) and print how clients connect and how to submit the run. With "
                                   "--submit, wait for num-clients SuperNodes, run the federation, print the "
                                   "summary and stop.")
    p.add_argument("--address", "--fleet-address", dest="address", default=DEFAULT_SERVER_ADDRESS,
                   metavar="HOST:PORT",
                   help=f"where the Fleet-only gateway listens for SuperNodes (default {DEFAULT_SERVER_ADDRESS}: "
                        "every interface); the SuperLink itself, with the operator's Control API, listens on "
                        "127.0.0.1 only")
    p.add_argument("--public-address", default=None, metavar="HOST:PORT",
                   help="the address clients use to reach this machine (for the printed commands)")
    _add_tls_flags(p, insecure_help="serve plaintext HTTP (only on a trusted network; no enrolment possible)")
    add_server_flags(p)
    p.add_argument("--database", default=None, metavar="FILE",
                   help="SuperLink state database (default: in memory)")
    p.add_argument("--flower-home", default=None, metavar="DIR",
                   help="FLWR_HOME with the federation entry for `flwr run` (default: <run-dir>/flower-home)")
    p.add_argument("--submit", action="store_true",
                   help="wait for num-clients SuperNodes, submit the run, stop when it ends")
    p.add_argument("--startup-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="with --submit: how long to wait for the SuperNodes")
    _add_last_flags(p, cmd_server)

    p = sub.add_parser("client", help="start one SuperNode (a client) that connects to a SuperLink",
                       description="Start flower-supernode for a data owner: on its own records (--data-path "
                                   "PATH --client-id NAME), or on partition K of N of a shared dataset "
                                   "(--partition-id K --num-partitions N). Each training round runs in a fresh "
                                   "process; the client's privacy ledger lives on disk in --state-dir, so a "
                                   "restarted client continues its epsilon, never from zero.")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="the SuperLink's address")
    p.add_argument("--data-path", default=None, metavar="PATH",
                   help="this owner's own records (a csv/parquet/npz file or an imagefolder/hf-disk folder, in the "
                        "format the run config's dataset names); every record in it is this client's")
    p.add_argument("--dataset", default=None, metavar="KIND", dest="own_data_kind",
                   help="with --data-path: the format of this owner's records when it differs from the run "
                        "config's (csv, parquet, npz, imagefolder, hf-disk); columns and labels still come from "
                        "the federation's schema")
    p.add_argument("--partition-id", type=int, default=None, metavar="K",
                   help="partition K of a shared dataset (instead of --data-path)")
    p.add_argument("--num-partitions", type=int, default=None, metavar="N")
    p.add_argument("--client-id", default=None,
                   help="stable client name (default client-<K, 3 digits>; required with --data-path)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="with --partition-id: this host's copy of the shared dataset")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="where this client keeps its durable ledger (default: the run config's state-dir, "
                        "else <run dir>/client-state, which must then be writable here)")
    p.add_argument("--privacy-policy", default=None, metavar="FILE",
                   help="this data owner's privacy policy (TOML); the client declines any run that breaks it "
                        "(see docs/privacy-policy.md)")
    p.add_argument("--port", type=int, default=0, metavar="PORT",
                   help="local port of the SuperNode's ClientApp runtime API (default: a free one)")
    _add_tls_flags(p, insecure_help="plaintext to the SuperLink (the default only for a loopback --server)",
                   client=True)
    add_client_flags(p)
    p.add_argument("--flower-home", default=None, metavar="DIR",
                   help="FLWR_HOME of the SuperNode (default: a temporary directory)")
    _add_last_flags(p, cmd_client, run_config=False)

    p = sub.add_parser("certs", help="generate a CA and a server certificate for TLS",
                       description="Write ca.crt, ca.key, server.pem, server.key into DIR. The server "
                                   "certificate is valid for 127.0.0.1, localhost and every --host. Clients "
                                   "need only ca.crt.")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="extra DNS name or IP address of the SuperLink (repeatable)")
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument("--force", action="store_true", help="replace existing certificates")
    p.set_defaults(func=cmd_certs)


def _add_last_flags(p: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int], *,
                    verbose_help: str = "show every line", run_config: bool = True) -> None:
    """``--verbose`` (SUPPRESS default: it only overrides the top-level ``-v`` when given), every run-config
    flag unless the command takes none, and the handler."""
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    if run_config:
        add_config_flags(p)
    p.set_defaults(func=func)


def _add_tls_flags(p: argparse.ArgumentParser, *, insecure_help: str, client: bool = False) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--certificates", default=None, metavar="DIR" if not client else "DIR|CA_FILE",
                       help="TLS: directory made by `dpfl certs`"
                       + (" (or the CA file alone)" if client else ""))
    group.add_argument("--insecure", action="store_true", help=insecure_help)


# --- helpers ----------------------------------------------------------------------------------------------
def _verbose(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "verbose", False))


def _split_address(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {address!r} is not valid: expected HOST:PORT, e.g. 10.0.0.5:9092")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _config_and_preflight(args: argparse.Namespace) -> RunConfig:
    """Resolve and check the run config like `dpfl simulate` (raises ConfigError / DataError)."""
    from dpfl.simulations.engines.simulate import preflight

    cfg = config_from_args(args)
    preflight(cfg)
    return cfg


def _print_run_summary(cfg: RunConfig, run_path: Path, summary: dict[str, Any] | None) -> int:
    """Print the summary the ServerApp wrote; 0, or 1 with one error line when it is missing or incomplete."""
    from dpfl.simulations.cli.summary import SummaryError, print_run_summary

    try:
        print_run_summary(cfg, run_path, summary)
    except SummaryError as exc:
        return error(str(exc))
    return 0


# --- launch -----------------------------------------------------------------------------------------------
def _supervised(sup: Supervisor, printer: LogPrinter, run: Callable[[], int],
                cleanup: Callable[[], None] | None = None) -> int:
    """Run ``run()`` under the supervisor: SIGTERM/Ctrl-C/launch errors become exit codes (143/130/1),
    and every started process is stopped, whatever happened."""
    from dpfl.simulations.deploy.supervisor import LaunchError, Terminated, interrupts_deferred, sigterm_as_exception

    try:
        with sigterm_as_exception():
            return run()
    except Terminated:
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except LaunchError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    finally:
        with interrupts_deferred():
            sup.stop_all()
        printer.close()
        if cleanup is not None:
            cleanup()


def cmd_launch(args: argparse.Namespace) -> int:
    from dpfl.simulations import apps
    from dpfl.simulations.data.datasets import DataError
    from dpfl.simulations.deploy.certs import CertificateError, load_certificates
    from dpfl.simulations.deploy.flower import repo_root
    from dpfl.simulations.deploy.launch import launch_federation
    from dpfl.simulations.deploy.supervisor import LaunchError

    try:
        cfg = config_from_args(args)
        if args.clients is not None:
            explicit = getattr(args, "num-clients", None)
            if explicit is not None and int(explicit) != args.clients:
                raise ConfigError(f"--clients {args.clients} disagrees with --num-clients {explicit}; "
                                  "give one of them")
            if args.clients < 1:
                raise ConfigError(f"--clients {args.clients} is not valid: expected an integer >= 1")
            cfg = cfg.replace(**{"num-clients": args.clients})
        for flag, value in (("--timeout", args.timeout), ("--startup-timeout", args.startup_timeout)):
            if value < 0:
                raise ConfigError(f"{flag} {value} is not valid: expected a number >= 0")
        if args.client_threads is not None and args.client_threads < 1:
            raise ConfigError(f"--client-threads {args.client_threads} is not valid: expected an "
                              "integer >= 1")
        certs = load_certificates(args.certificates) if args.certificates else None
        repo_root()
        from dpfl.simulations.engines.simulate import owner_policies, plan_nodes, preflight

        if args.client_data and args.clients is not None:
            raise ConfigError("--client-data starts one client per owner's path; drop --clients")
        cfg, nodes = plan_nodes(cfg, args.privacy_policy, args.client_data,
                                clients_given=args.clients is not None or "num-clients" in explicit_keys(args))
        preflight(cfg, nodes)
        policies = owner_policies(nodes)
    except (ConfigError, DataError, CertificateError, LaunchError) as exc:
        return fail(str(exc))
    run_path = apps.default_run_path(cfg)
    from dpfl.simulations.engines.run_plan import write_plan
    from dpfl.simulations.engines.simulate import check_run_directory, write_client_ledger_index

    try:
        check_run_directory(run_path, bool(cfg["resume"]))
    except ConfigError as exc:
        return fail(str(exc))
    write_client_ledger_index(run_path, policies)
    if not cfg["resume"]:
        write_plan(run_path, "launch", nodes, secure=not args.insecure,
                   certificates=str(certs.directory) if certs else None)
    console.print(f"[bold]dpfl launch[/] · {cfg['dataset']} · {cfg['num-clients']} clients (SuperNodes) · "
                  f"model {cfg['model']} · {cfg['num-server-rounds']} rounds · "
                  f"{'plaintext, any SuperNode' if args.insecure else 'TLS, enrolled SuperNodes only'}")
    result = launch_federation(cfg, run_path, certs=certs, secure=not args.insecure, console=console,
                               verbose=_verbose(args),
                               timeout=args.timeout, startup_timeout=args.startup_timeout or 120.0,
                               client_threads=args.client_threads, node_configs=nodes)
    return report_launch(cfg, run_path, result)


def report_launch(cfg: RunConfig, run_path: Path, result: LaunchResult) -> int:
    """What a launched federation's end looks like on the console, and the exit code (``launch``, ``resume``)."""
    code = result.exit_code
    if result.message:
        stopped = code in (EXIT_INTERRUPTED, EXIT_TERMINATED)
        console.print(f"[{'yellow' if stopped else 'bold red'}]{'error: ' if code and not stopped else ''}"
                      f"{escape(result.message)}[/]")
    if result.summary is not None:
        code = code or _print_run_summary(cfg, run_path, result.summary)
    if result.client_exits:
        console.print("  SuperNodes that died during the run: "
                      + ", ".join(f"{k} ({v})" for k, v in result.client_exits.items()))
    console.print(f"  process logs  {run_path / 'logs'}")
    if result.leftover_pids or result.leftover_ports:
        console.print(f"[bold red]error:[/] processes {result.leftover_pids} / ports {result.leftover_ports} "
                      "still alive after SIGKILL")
        return code or 1
    return code


# --- server -----------------------------------------------------------------------------------------------
def cmd_server(args: argparse.Namespace) -> int:
    from dpfl.simulations import apps
    from dpfl.simulations.data.datasets import DataError
    from dpfl.simulations.deploy.certs import CertificateError, certificate_hosts, load_certificates
    from dpfl.simulations.deploy.flower import absolute_paths, repo_root, write_flower_home, write_run_config
    from dpfl.simulations.deploy.gateway import find_nginx
    from dpfl.simulations.deploy.node_keys import NodeKeyError, enrolment_list
    from dpfl.simulations.deploy.processes import free_ports
    from dpfl.simulations.deploy.supervisor import LaunchError

    try:
        if not args.certificates and not args.insecure:
            raise ConfigError("dpfl server needs --certificates DIR (make them with `dpfl certs DIR --host "
                              "NAME`) or --insecure for plaintext on a trusted network")
        if args.insecure and args.enrol:
            raise ConfigError("--enrol needs TLS (Flower's SuperNode authentication refuses plaintext): pass "
                              "--certificates DIR instead of --insecure")
        if args.certificates and not args.enrol and not args.any_node:
            raise ConfigError("say which data owners this server admits: --enrol FILE|DIR (each owner's NAME.pub "
                              "from `dpfl keys`), or --any-node to accept any SuperNode that holds ca.crt")
        if args.enrol and args.any_node:
            raise ConfigError("--enrol and --any-node contradict each other; give one")
        host, port = _split_address(args.address, "--address")
        public_host, public_port = _split_address(args.public_address, "--public-address") \
            if args.public_address else (host if host not in ("0.0.0.0", "::") else "<this machine>", port)
        certs = load_certificates(args.certificates) if args.certificates else None
        enrolled = enrolment_list(args.enrol) if args.enrol else None
        find_nginx()
        cfg = _config_and_preflight(args)
        root = repo_root()
    except (ConfigError, DataError, CertificateError, LaunchError, NodeKeyError) as exc:
        return fail(str(exc))
    if certs is not None and public_host != "<this machine>":
        names = certificate_hosts(certs.server_cert)
        if public_host not in names:
            console.print(f"[yellow]warning:[/] {certs.server_cert} is valid for {', '.join(names)}, not "
                          f"{public_host}; clients will refuse it (regenerate with --host {public_host})")
    run_path = apps.default_run_path(cfg)
    cfg = absolute_paths(cfg, run_path)
    home = (Path(args.flower_home).expanduser().resolve() if args.flower_home
            else run_path.parent / "flower-home")
    (control_port,) = free_ports(1)
    write_flower_home(home, "dpfl", f"127.0.0.1:{control_port}", ca_cert=certs.ca_cert if certs else None)
    run_config = write_run_config(home / f"run-config-{run_path.name}.toml", cfg)
    tls = ["--certificates", "<dir with ca.crt>"] if certs else ["--insecure"]
    n = cfg["num-clients"]
    console.print(f"[bold]dpfl server[/] · Fleet gateway on {args.address} ({'TLS' if certs else 'PLAINTEXT'}"
                  f"{', enrolled SuperNodes only' if enrolled else ', any SuperNode'}) · SuperLink and Control API "
                  f"on 127.0.0.1:{control_port} only")
    if certs is None:
        console.print("[yellow]warning: --insecure: model updates travel in plaintext and any SuperNode can "
                      "join; use --certificates and --enrol outside a trusted network[/]")
    elif enrolled is None:
        console.print("[yellow]warning: --any-node: any SuperNode that holds ca.crt joins and receives the "
                      "model; enrol the data owners' keys with --enrol instead[/]")
    if host in ("0.0.0.0", "::"):
        console.print("  the gateway listens on every interface of this machine; it serves only the Fleet API "
                      "(SuperNodes), never Control (`flwr run`, `flwr ls`, `flwr supernode register`)")
    key = ["--node-key", "<owner's NAME.key>"] if enrolled else []
    console.print(f"Start each of the {n} clients on its machine (K = 0..{n - 1}):")
    console.print(f"  dpfl client --server {public_host}:{public_port} --partition-id K --num-partitions {n} "
                  f"{' '.join(tls + key)} [--data-dir DIR] [--state-dir DIR]")
    console.print("Submit the run from this machine (source checkout):")
    console.print(f"  FLWR_HOME={home} flwr run {root} dpfl --run-config {run_config} --stream")
    if enrolled:
        console.print(f"  enrol another owner later: FLWR_HOME={home} flwr supernode register NAME.pub dpfl")
    console.print(f"  (federation entry in {home / 'config.toml'}; run directory {run_path})")
    database = Path(args.database).expanduser().resolve() if args.database else None
    return _serve(args, cfg, home, run_config, run_path,
                  dict(public_host=host, public_port=port, certs=certs, enrolled=enrolled, database=database,
                       control_port=control_port))


def _serve(args: argparse.Namespace, cfg: RunConfig, home: Path, run_config: Path, run_path: Path,
           link_options: dict[str, Any]) -> int:
    """Supervise the SuperLink and its gateway in the foreground; with --submit, also wait for clients and run."""
    from dpfl.privacy.rundata import read_summary
    from dpfl.simulations.deploy.flower import flwr_run_command, repo_root
    from dpfl.simulations.deploy.launch import run_exit_code
    from dpfl.simulations.deploy.logs import LogPrinter
    from dpfl.simulations.deploy.secure_link import enrolment_summary, start_secure_link
    from dpfl.simulations.deploy.supervisor import LaunchError, Supervisor

    log_dir = run_path / "logs" if args.submit else home / "logs"
    console.print(f"  (process logs in {log_dir}; Ctrl-C stops the SuperLink)")
    printer = LogPrinter(console, verbose=_verbose(args), merged_log=log_dir / "server-side.log")
    sup = Supervisor(log_dir, printer)

    def run() -> int:
        link = start_secure_link(sup, work_dir=home, startup_timeout=min(args.startup_timeout, 120.0),
                                 operator_home=home, **link_options)
        printer.info(enrolment_summary(link))
        superlink = link.superlink
        if not args.submit:
            while (problem := link.failure()) is None:
                time.sleep(0.5)
            raise LaunchError(problem)
        n = cfg["num-clients"]
        printer.info(f"waiting for {n} SuperNodes (up to {args.startup_timeout:.0f} s)")
        deadline = time.monotonic() + args.startup_timeout
        while len({m.group(1) for x in list(superlink.lines) if (m := ACTIVATED_RE.search(x))}) < n:
            if (problem := link.failure()) is not None:
                raise LaunchError(problem)
            if time.monotonic() > deadline:
                raise LaunchError(f"fewer than {n} SuperNodes connected within "
                                  f"{args.startup_timeout:.0f} s")
            time.sleep(0.5)
        printer.info(f"{n} SuperNodes connected; submitting the run")
        server = sup.start("server", flwr_run_command(repo_root(), "dpfl", run_config),
                           env={"FLWR_HOME": str(home)})
        while server.poll() is None:
            if (problem := link.failure()) is not None:
                raise LaunchError(f"during the run: {problem}")
            time.sleep(0.2)
        server.wait_output(5.0)
        summary = read_summary(run_path)
        code = run_exit_code(summary)
        if summary is not None:
            return code or _print_run_summary(cfg, run_path, summary)
        console.print(f"[bold red]error:[/] the run did not finish; see {escape(str(log_dir))}")
        return code

    return _supervised(sup, printer, run)


# --- client -----------------------------------------------------------------------------------------------
def _check_own_data(args: argparse.Namespace) -> str | None:
    """The absolute path of ``--data-path`` (checked to exist), or None without it."""
    if not args.data_path:
        return None
    if args.partition_id is not None or args.num_partitions is not None or args.data_dir:
        raise ConfigError("--data-path is this owner's own records: give it without --partition-id, "
                          "--num-partitions and --data-dir (those pick a partition of a shared dataset)")
    if not args.client_id:
        raise ConfigError("--data-path needs --client-id NAME: a stable name the server and this owner's ledger "
                          "know this client by")
    where = Path(args.data_path).expanduser().resolve()
    if not where.exists():
        raise ConfigError(f"--data-path {args.data_path} does not exist; give this owner's data file or folder")
    return str(where)


def cmd_client(args: argparse.Namespace) -> int:
    from dpfl.simulations.deploy.certs import CertificateError, load_certificates
    from dpfl.simulations.deploy.flower import node_config_string
    from dpfl.simulations.deploy.logs import LogPrinter
    from dpfl.simulations.deploy.node_keys import NodeKeyError, check_private_key
    from dpfl.simulations.deploy.processes import free_ports
    from dpfl.simulations.deploy.superexec import start_node
    from dpfl.simulations.deploy.supervisor import Supervisor

    try:
        host, _ = _split_address(args.server, "--server")
        own = _check_own_data(args)
        if own is None and (args.partition_id is None or args.num_partitions is None):
            raise ConfigError("say which records this client trains on: --data-path PATH --client-id NAME (its "
                              "own), or --partition-id K --num-partitions N (a partition of a shared dataset)")
        if own is not None:
            args.partition_id, args.num_partitions = 0, 1
        if args.num_partitions < 1:
            raise ConfigError(f"--num-partitions {args.num_partitions} is not valid: expected an "
                              "integer >= 1")
        if not 0 <= args.partition_id < args.num_partitions:
            raise ConfigError(f"--partition-id {args.partition_id} is not valid: expected "
                              f"0..{args.num_partitions - 1}")
        if not (0 <= args.port < 65536):
            raise ConfigError(f"--port {args.port} is not valid: expected 1..65535 (0: a free port)")
        ca: Path | None = None
        if args.certificates:
            given = Path(args.certificates).expanduser().resolve()
            ca = given if given.is_file() else load_certificates(given, need_server=False).ca_cert
        elif not args.insecure and not _is_loopback(host):
            raise ConfigError(f"--server {args.server} is not on this machine: pass --certificates DIR "
                              "(the CA from `dpfl certs`) or --insecure for plaintext on a trusted network")
        if args.client_id:
            from dpfl.privacy.wire import WireError, check_client_id

            try:
                check_client_id(args.client_id, "--client-id")
            except WireError as exc:
                raise ConfigError(str(exc)) from None
        node: dict[str, object] = ({"own-data": own} if own is not None else
                                   {"partition-id": args.partition_id, "num-partitions": args.num_partitions})
        if args.client_id:
            node["client-id"] = args.client_id
        if args.own_data_kind:
            from dpfl.simulations.data.spec import FILE_KINDS

            if own is None or args.own_data_kind not in FILE_KINDS:
                raise ConfigError(f"--dataset {args.own_data_kind} is not valid here: it names the format of "
                                  f"--data-path, one of {', '.join(FILE_KINDS)}")
            node["own-data-kind"] = args.own_data_kind
        for key, value in (("data-dir", args.data_dir), ("state-dir", args.state_dir)):
            if value:
                node[key] = str(Path(value).expanduser().resolve())
        policy_apps: tuple[str, ...] = ()
        if args.privacy_policy:
            from dpfl.privacy.owner_policy import OwnerPolicy, OwnerPolicyError

            try:
                policy_apps = OwnerPolicy.load(args.privacy_policy).approved_apps  # a bad policy stops here
            except OwnerPolicyError as exc:
                raise ConfigError(str(exc)) from None
            node["privacy-policy"] = str(Path(args.privacy_policy).expanduser().resolve())
        node_key = check_private_key(args.node_key) if args.node_key else None
        approved, approved_from = client_approved_apps(args, policy_apps)
        if args.data_dir and not Path(str(node["data-dir"])).is_dir():
            raise ConfigError(f"--data-dir {args.data_dir} is not a directory")
        node_config_string(node)  # rejects values Flower cannot parse
    except (ConfigError, CertificateError, NodeKeyError) as exc:
        return fail(str(exc))
    if ca is None:
        console.print(f"[yellow]warning: --insecure: traffic to {args.server} is plaintext[/]")
    if node_key is None:
        console.print("[yellow]warning: no --node-key: a server that admits only enrolled data owners refuses this "
                      "client (make a key with `dpfl keys DIR --name NAME` and send NAME.pub to the operator)[/]")
    console.print(f"  this node runs only app bundle(s) {', '.join(h[:16] for h in approved)}… ({approved_from})")
    port = args.port or free_ports(1)[0]
    name = args.client_id or f"client-{args.partition_id}"
    home_tmp = None if args.flower_home else tempfile.mkdtemp(prefix=f"dpfl-{name}-")
    home = Path(args.flower_home).expanduser().resolve() if args.flower_home else Path(str(home_tmp))
    printer = LogPrinter(console, verbose=_verbose(args), server_names=())
    sup = Supervisor(home / "logs", printer)

    def run() -> int:
        proc = start_node(sup, name, args.server, port, node, ca, home=home, approved=approved, node_key=node_key)
        printer.info(f"{name} connecting to {args.server} ({'TLS' if ca else 'plaintext'}); Ctrl-C to stop")
        while proc.poll() is None:
            time.sleep(0.5)
        code = proc.poll() or 0
        if code == FLOWER_CONNECTION_ERROR:
            console.print(f"[bold red]error:[/] the SuperLink at {escape(args.server)} refused or dropped this "
                          "node (Flower exit 305): a server that admits only enrolled data owners refuses a node "
                          "whose key it does not know; send NAME.pub to the operator and pass --node-key NAME.key")
            return 1
        return code

    def cleanup() -> None:
        if home_tmp:
            import shutil

            shutil.rmtree(home_tmp, ignore_errors=True)

    return _supervised(sup, printer, run, cleanup)


# --- certs ------------------------------------------------------------------------------------------------
def cmd_certs(args: argparse.Namespace) -> int:
    from dpfl.simulations.deploy.certs import CertificateError, generate_certificates

    try:
        paths = generate_certificates(args.directory, args.host, days=args.days, overwrite=args.force)
    except CertificateError as exc:
        return fail(str(exc))
    console.print(f"wrote {paths.ca_cert}, {paths.ca_key} (keep private), {paths.server_cert}, "
                  f"{paths.server_key}")
    console.print(f"  local federation:  dpfl launch --certificates {paths.directory} ...")
    console.print(f"  server machine:    dpfl server --certificates {paths.directory} ...")
    console.print(f"  client machines:   copy {paths.ca_cert.name} only; dpfl client --certificates "
                  f"<dir or {paths.ca_cert.name}> ...")
    return 0
