"""The ``netns`` provider: hosts are namespaces with their own interfaces and cgroup limits, and
everything goes away on destroy, also after a failed deploy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from engage.deploy.infrastructure import Infrastructure
from engage.deploy.providers.base import ProviderError
from engage.deploy.providers.netns import NetnsProvider, netns_available

_REASON = netns_available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

INFRA = {
    "provider": "netns",
    "layers": [
        {"name": "cloud", "hosts": 1, "cpu": 2, "memory": "1GiB"},
        {"name": "edge", "hosts": 2, "cpu": 0.25, "memory": "64MiB"},
    ],
    "network": [{"src": "edge", "dst": "cloud", "delay": "5ms", "rate": "50mbit"}],
    # Ansible through 'ip netns exec', whether or not sshd is installed; the SSH path has its own test
    "options": {"sshd": False},
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    infra = Infrastructure.from_dict(INFRA)
    infra.validate()
    prov = NetnsProvider(infra, tmp_path_factory.mktemp("netns"))
    try:
        prov.deploy()
        prov.apply_network()
        yield prov
    finally:
        prov.destroy()


def _output(provider: NetnsProvider, host: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        provider.command_for(provider.host(host), argv), capture_output=True, text=True, timeout=timeout
    )


def _leftovers(prefix: str) -> list[str]:
    found = [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()]
    found = [ns for ns in found if ns.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {prefix}m"] if f"{prefix}m" in links else []
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/engage-{prefix}")]
    return found


def test_job_on_edge_1_sees_only_its_namespace_interfaces(provider, tmp_path):
    log = tmp_path / "links.log"
    proc = provider.run(provider.host("edge-1"), ["ip", "-o", "link"], log_path=log)
    assert proc.wait(timeout=30) == 0
    names = sorted(re.findall(r"^\d+: ([^:@]+)", log.read_text(), flags=re.M))
    assert names == ["eth0", "lo"]
    addresses = _output(provider, "edge-1", ["ip", "-o", "-4", "addr"]).stdout
    assert provider.host("edge-1").address in addresses
    assert provider.host("edge-2").address not in addresses


def test_enoslib_actions_run_inside_the_host(provider):
    import enoslib as en

    results = en.run_command("ip -o -4 addr show dev eth0", roles=provider.roles()["edge"][1:])
    (result,) = list(results)
    assert provider.host("edge-2").address in result.stdout


def test_hosts_reach_each_other_and_this_machine_reaches_them(provider):
    cloud = provider.host("cloud-1").address
    code = f"import socket; s=socket.create_connection(({cloud!r}, 9), timeout=3)"
    # nothing listens on port 9: a refused connection proves the packet made it there and back
    result = _output(provider, "edge-1", [sys.executable, "-c", code])
    assert "ConnectionRefusedError" in result.stderr
    with pytest.raises(ConnectionRefusedError):
        import socket

        socket.create_connection((provider.host("edge-2").address, 9), timeout=3)


@pytest.mark.timing
def test_cpu_limit_is_set_and_enforced(provider):
    limits = provider.cgroup_limits("edge-1")
    if not limits:
        pytest.skip(f"cgroup limits unavailable here: {provider.warnings}")
    assert limits["cpu.max"] == "25000 100000"
    assert provider.cgroup_limits("cloud-1")["cpu.max"] == "200000 100000"
    spin = "import time\nend=time.monotonic()+1.0\nwhile time.monotonic()<end: pass\nprint(time.process_time())"
    used = float(_output(provider, "edge-1", [sys.executable, "-c", spin]).stdout)
    # a quarter of a core over one second of wall time, plus the interpreter's start-up
    assert 0.1 < used < 0.45, used


def test_memory_limit_kills_a_process_that_exceeds_it(provider):
    limits = provider.cgroup_limits("edge-1")
    if not limits:
        pytest.skip(f"cgroup limits unavailable here: {provider.warnings}")
    assert limits["memory.max"] == str(64 * 1024**2)
    grab = "import sys; b=bytearray(int(sys.argv[1])*2**20); b[::4096]=b'x'*len(b[::4096]); print('ok')"
    small = _output(provider, "edge-1", [sys.executable, "-c", grab, "16"])
    assert small.returncode == 0 and small.stdout.strip() == "ok"
    big = _output(provider, "edge-1", [sys.executable, "-c", grab, "200"])
    assert big.returncode == -9, (big.returncode, big.stderr[-300:])
    # the cloud host is bigger: the same allocation fits there
    assert _output(provider, "cloud-1", [sys.executable, "-c", grab, "200"]).returncode == 0


def test_destroy_removes_everything_and_parallel_deployments_do_not_collide(tmp_path):
    infra = Infrastructure.from_dict({"provider": "netns", "layers": [{"name": "edge", "memory": "64MiB"}]})
    first, second = NetnsProvider(infra, tmp_path / "a"), NetnsProvider(infra, tmp_path / "b")
    try:
        first.deploy()
        second.deploy()
        assert first.prefix != second.prefix
        assert first.subnet != second.subnet
        assert first.host("edge-1").address != second.host("edge-1").address
        sleeper = first.run(first.host("edge-1"), [sys.executable, "-c", "import time; time.sleep(600)"])
    finally:
        first.destroy()
        second.destroy()
    assert sleeper.wait(timeout=10) != 0, "processes on a host end with it"
    assert _leftovers(first.prefix) == [] and _leftovers(second.prefix) == []
    first.destroy()  # idempotent


def test_a_failed_deploy_leaves_nothing_behind(tmp_path, monkeypatch):
    infra = Infrastructure.from_dict({"provider": "netns", "layers": [{"name": "cloud"}, {"name": "edge", "hosts": 2}]})
    prov = NetnsProvider(infra, tmp_path)
    original = NetnsProvider._create_host

    def fail_on_edge_2(self, layer, host_name, *args):
        if host_name == "edge-2":
            raise ProviderError("netns: simulated failure while creating edge-2")
        return original(self, layer, host_name, *args)

    monkeypatch.setattr(NetnsProvider, "_create_host", fail_on_edge_2)
    with pytest.raises(ProviderError, match="edge-2"), prov:
        pass
    assert _leftovers(prov.prefix) == []


def test_bad_subnet_option_fails_with_one_line(tmp_path):
    infra = Infrastructure.from_dict(
        {"provider": "netns", "layers": [{"name": "edge"}], "options": {"subnet": "10.9.0.0/24"}}
    )
    prov = NetnsProvider(infra, tmp_path)
    with pytest.raises(ProviderError, match=r"options\.subnet .*/16"), prov:
        pass
    assert _leftovers(prov.prefix) == []


@pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="sshd missing: install Debian's openssh-server")
def test_hosts_run_their_own_sshd_and_enoslib_reaches_them_over_ssh(tmp_path):
    import enoslib as en

    infra = Infrastructure.from_dict(
        {"provider": "netns", "layers": [{"name": "edge", "memory": "128MiB"}], "options": {"sshd": True}}
    )
    with NetnsProvider(infra, tmp_path) as prov:
        host = prov.host("edge-1")
        prov.attach_enoslib()
        assert host.enoslib_host.address == host.address
        assert "ansible_connection" not in host.enoslib_host.extra
        (result,) = list(en.run_command("ip -o link", roles=[host.enoslib_host]))
        names = sorted(re.findall(r"^\d+: ([^:@]+)", result.stdout, flags=re.M))
        assert names == ["eth0", "lo"]
        key = tmp_path / f"netns-{prov.prefix}" / "ssh" / "id_ed25519"
        ssh = ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        out = subprocess.run([*ssh, f"root@{host.address}", "cat /proc/self/cgroup"], capture_output=True, text=True)
        # a login lands in the host's cgroup, so its limits hold for SSH sessions too
        assert f"engage-{prov.prefix}/edge-1" in out.stdout, out.stderr
    assert _leftovers(prov.prefix) == []


@pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="sshd missing: install Debian's openssh-server")
def test_a_job_folder_sent_over_sftp_keeps_its_modes_and_lands_in_place_when_sent_again(tmp_path):
    """As the launcher sends a job's folder to a testbed host: over SFTP (paramiko, as to a
    Grid'5000 node) to a host with its own sshd. The contract (0600) stays private, and a retried
    attempt's folder replaces the first's files instead of landing in a folder inside it."""
    import fsspec

    from engage.deploy.providers.base import put_tree

    job = tmp_path / "jobs" / "3"
    (job / "logs").mkdir(parents=True)
    (job / "job.json").write_text('{"attempt": 1}')
    (job / "job.json").chmod(0o600)
    (job / "logs" / "out.log").write_text("hello")
    remote = tmp_path / "remote" / "jobs" / "3"
    infra = Infrastructure.from_dict({"provider": "netns", "layers": [{"name": "edge"}], "options": {"sshd": True}})
    with NetnsProvider(infra, tmp_path / "state") as prov:
        host = prov.host("edge-1")
        key = tmp_path / "state" / f"netns-{prov.prefix}" / "ssh" / "id_ed25519"
        fs = fsspec.filesystem(
            "sftp", host=host.address, username="root", key_filename=str(key), skip_instance_cache=True
        )
        put_tree(fs, job, str(remote))
        assert (remote / "job.json").stat().st_mode & 0o777 == 0o600
        assert (remote / "logs" / "out.log").read_text() == "hello"
        (remote / "mlflow-run-id").write_text("the first attempt's run")  # what the job left there
        (job / "job.json").write_text('{"attempt": 2}')
        put_tree(fs, job, str(remote))
        fs.client.close()
    assert sorted(p.name for p in remote.iterdir()) == ["job.json", "logs"]
    assert (remote / "job.json").read_text() == '{"attempt": 2}'
    assert (remote / "job.json").stat().st_mode & 0o777 == 0o600
    assert (remote.stat().st_mode & 0o777) == (job.stat().st_mode & 0o777)


@pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="sshd missing: install Debian's openssh-server")
def test_a_job_on_another_host_ends_with_the_launchers_connection_and_its_files_come_back_whole(tmp_path):
    """A host reached over SSH, as a testbed's: a command the provider starts there watches its
    standard input (``end_with_stdin``, the job runner's ``--exit-with-stdin``) and ends when the
    local ssh is stopped, as the launcher stops a job (Ctrl-C, a timeout), instead of running on;
    a file the job never wrote is not fetched as an empty one."""
    import time

    import fsspec
    import psutil

    from engage.deploy.processes import stop_process
    from engage.deploy.providers.base import Host
    from engage.deploy.providers.local import LocalProvider

    infra = Infrastructure.from_dict({"provider": "netns", "layers": [{"name": "edge"}], "options": {"sshd": True}})
    with NetnsProvider(infra, tmp_path / "state") as prov:
        node = prov.host("edge-1")
        key = str(tmp_path / "state" / f"netns-{prov.prefix}" / "ssh" / "id_ed25519")
        ssh = ["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        host = Host("edge-1", "edge", node.address, exec_prefix=[*ssh, "-o", "LogLevel=ERROR", f"root@{node.address}"],
                    remote=True)  # fmt: skip
        sftp = fsspec.filesystem("sftp", host=node.address, username="root", key_filename=key, skip_instance_cache=True)

        class OverSsh(LocalProvider):
            def filesystem(self, host: Host) -> object:
                return sftp

        provider = OverSsh(Infrastructure.from_dict({"provider": "local", "layers": [{"name": "edge"}]}), tmp_path)
        pid_file = tmp_path / "remote.pid"
        code = (
            "import os, sys, time; from engage.core.lifeline import end_with_stdin; end_with_stdin(grace_s=2); "
            "assert sys.stdin.read() == ''; "  # the lifeline is off standard input: it reads empty, never waits
            f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
        )
        local = provider.run(host, [sys.executable, "-c", code], log_path=tmp_path / "remote.log")
        deadline = time.monotonic() + 30
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        remote_pid = int(pid_file.read_text())
        assert psutil.pid_exists(remote_pid), (tmp_path / "remote.log").read_text()
        stop_process(local)
        deadline = time.monotonic() + 15
        while psutil.pid_exists(remote_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not psutil.pid_exists(remote_pid), "the job ran on after the launcher stopped it"

        with pytest.raises(OSError):
            provider.get(host, str(tmp_path / "never-written" / "result.pkl"), tmp_path / "back" / "result.pkl")
        assert not (tmp_path / "back" / "result.pkl").exists(), "an empty result came back for a job that wrote none"
        sftp.client.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sed": 1}, "infrastructure.options.sed: not a netns option; options are subnet, seed, sshd"),
        ({"seed": "abc"}, "infrastructure.options.seed is 'abc'; give a whole number"),
        ({"sshd": "maybe"}, "infrastructure.options.sshd is 'maybe'; use auto, true or false"),
        ({"subnet": "10.0.0.0/8"}, "infrastructure.options.subnet is '10.0.0.0/8'; give a 10.X.0.0/16"),
        ({"subnet": "192.168.0.0/16"}, "infrastructure.options.subnet is '192.168.0.0/16'"),
    ],
)
def test_netns_options_are_checked_before_anything_is_created(options, message) -> None:
    """Statically, as the launcher's setup checks every provider: a typo was ignored, and the
    others failed in the middle of deploying, after the sweep's folder and MLflow run existed."""
    from engage.deploy.infrastructure import InfrastructureError

    infra = Infrastructure.from_dict({"provider": "netns", "layers": [{"name": "edge"}], "options": options})
    with pytest.raises(InfrastructureError) as error:
        NetnsProvider.check(infra)
    assert message in str(error.value) and "\n" not in str(error.value)
    good = {"seed": 3, "sshd": False, "subnet": "10.240.0.0/16"}
    NetnsProvider.check(Infrastructure.from_dict({"provider": "netns", "layers": [{"name": "edge"}], "options": good}))
