"""A throwaway single-node SLURM cluster (slurmctld + slurmd + munged) for tests/test_slurm.py.

Made for a root shell in a container with Debian's slurm-wlm and munge and no systemd or cgroups.
What this needs, found the hard way:
  - slurm.conf must be /etc/slurm/slurm.conf: the executor's jobstep drops SLURM_* variables,
    so a SLURM_CONF elsewhere is lost inside jobs. Files already there are backed up and restored.
  - proctrack/linuxproc, task/none, no accounting (no slurmdbd), SlurmUser=root.
  - A GPU is faked in gres.conf with `File=/dev/null` (a GPU without a File makes the node invalid).
  - slurmd 24.11 (Debian 13) starts its cgroup plugin whatever the task and proctrack plugins, and
    exits where there is no cgroup tree (a chroot, a container without /sys/fs/cgroup: "Unable to
    initialize cgroup plugin"). cgroup.conf's `CgroupPlugin=disabled` (new in 24.05) turns that
    off from 24.05 on; 22.05 (Debian 12) knows no such value, starts no cgroup plugin here and
    gets no cgroup.conf.
  - munged runs as the munge user with /run/munge owned by munge.
  - A large MinJobAge keeps finished jobs visible to `squeue` (the status command without sacct).
  - Which GPU variables a job sees for such a fake GPU depends on the SLURM version: ask the
    cluster (``gpu_step()``) instead of assuming.
Every daemon this starts is stopped by its PID; a munged that was already running is left alone.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from antigrok.runlog import SLURM_GPU_VARIABLES

SLURM_ETC = Path("/etc/slurm")
CONFIG_FILES = ("slurm.conf", "gres.conf", "cgroup.conf")
# The first SLURM whose cgroup.conf takes CgroupPlugin=disabled (its NEWS, 24.05.0rc1).
CGROUP_DISABLED_SINCE = (24, 5)
DAEMONS = ("slurmctld", "slurmd", "munged")
CLIENTS = ("sinfo", "sbatch", "squeue", "scontrol", "scancel", "srun", "munge", "unmunge")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_KEY = Path("/etc/munge/munge.key")
# One cluster per machine at a time: two test sessions would overwrite each other's /etc/slurm.
LOCK_FILE = Path("/tmp/antigrok-slurm-cluster.lock")
OUR_HEADER = "# Written by tests/slurm_cluster.py"

PARTITION = "antigrok_test"
NODE = "localhost"
# Fake GPUs: one device file each. Two, so two training jobs run side by side on a 2-core runner.
FAKE_GPU_FILES = ("/dev/null", "/dev/zero")
# Memory is not enforced here (no cgroups, no accounting); declaring plenty lets the shipped
# profile's requests (profiles/slurm) fit on a small CI runner unchanged.
DECLARED_MEMORY_MB = 64000
GPU_STEP_JOB_NAME = "antigrok-gpu-step"


@dataclass(frozen=True)
class GpuStep:
    """What SLURM set in a one-GPU job step: its job id and those of SLURM_GPU_VARIABLES it set."""

    job_id: str
    variables: dict[str, str]


def environment_without_slurm_or_gpus() -> dict[str, str]:
    """This process's environment less SLURM's and the GPU variables: what a step sees of those
    then comes from SLURM alone, as in the executor's job steps (which drop inherited SLURM_*)."""
    inherited = ("SLURM_", "SRUN_", "SBATCH_")
    return {name: value for name, value in os.environ.items()
            if not name.startswith(inherited) and name not in SLURM_GPU_VARIABLES}


def which(name: str) -> str | None:
    """The program's path; the daemons live in /usr/sbin, which a non-login PATH may lack."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def missing_requirements() -> str | None:
    """Why a local cluster cannot be started here, or None when it can."""
    missing = [name for name in DAEMONS + CLIENTS if which(name) is None]
    if missing:
        return f"SLURM/munge not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (it writes /etc/slurm and runs slurmd as root)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user: reinstall the munge package"
    if not MUNGE_KEY.exists():
        return f"no munge key at {MUNGE_KEY}: run `mungekey --create` or reinstall munge"
    return None


def slurm_version() -> str:
    """`slurmd -V`, e.g. ``slurm-wlm 22.05.8`` on Debian 12 (the clients' --version needs a slurm.conf)."""
    result = subprocess.run([which("slurmd"), "-V"], capture_output=True, text=True, timeout=30)
    return (result.stdout + result.stderr).strip()


def slurm_release(version: str) -> tuple[int, int]:
    """(major, minor) of a `slurmd -V` text, e.g. ``slurm-wlm 24.11.5`` -> (24, 11)."""
    match = re.search(r"(\d+)\.(\d+)", version)
    if match is None:
        raise RuntimeError(f"cannot read a SLURM version from `slurmd -V`: {version!r}")
    return int(match.group(1)), int(match.group(2))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf(state_dir: Path, ctld_port: int, slurmd_port: int, cpus: int) -> str:
    return f"""{OUR_HEADER} for a test; the original is restored afterwards.
ClusterName=antigrok-test
SlurmctldHost={NODE}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state_dir}/ctld
SlurmdSpoolDir={state_dir}/slurmd
SlurmctldPidFile={state_dir}/slurmctld.pid
SlurmdPidFile={state_dir}/slurmd.pid
SlurmctldLogFile={state_dir}/slurmctld.log
SlurmdLogFile={state_dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=86400
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={NODE} CPUs={cpus} RealMemory={DECLARED_MEMORY_MB} Gres=gpu:{len(FAKE_GPU_FILES)} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def gres_conf() -> str:
    lines = [f"NodeName={NODE} Name=gpu File={path}" for path in FAKE_GPU_FILES]
    return f"{OUR_HEADER}: fake GPUs for a test.\n" + "\n".join(lines) + "\n"


def cgroup_conf() -> str:
    """No cgroups: this node tracks processes by /proc (proctrack/linuxproc) and binds nothing
    (task/none); a container or chroot may have no cgroup tree, or one that slurmd may not touch."""
    return f"{OUR_HEADER}: no cgroups for a test.\nCgroupPlugin=disabled\n"


def config_files(state_dir: Path, version: str, cpus: int) -> dict[str, str]:
    """The files this test writes to /etc/slurm for a slurmd of `slurmd -V` ``version``."""
    files = {"slurm.conf": slurm_conf(state_dir, free_port(), free_port(), cpus), "gres.conf": gres_conf()}
    if slurm_release(version) >= CGROUP_DISABLED_SINCE:
        files["cgroup.conf"] = cgroup_conf()
    return files


def munge_works() -> bool:
    """True when a munged answers on the default socket."""
    try:
        credential = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if credential.returncode != 0:
            return False
        decoded = subprocess.run(["unmunge"], input=credential.stdout, capture_output=True, timeout=10)
        return decoded.returncode == 0
    except subprocess.TimeoutExpired:
        return False


class SingleNodeSlurm:
    """Start with ``start()`` (or ``with``); ``stop()`` ends what it started and restores /etc/slurm."""

    def __init__(self, state_dir: Path, startup_timeout_s: float = 90.0):
        self.state_dir = Path(state_dir)
        self.startup_timeout_s = startup_timeout_s
        self.partition = PARTITION
        self._processes: dict[str, subprocess.Popen] = {}
        self._backups: dict[str, Path | None] = {}
        self._lock = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "SingleNodeSlurm":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        self._acquire_lock()
        try:
            self._write_config()
            self._start_munged()
            self._start_daemon("slurmctld", [which("slurmctld"), "-D", "-c"])
            self._start_daemon("slurmd", [which("slurmd"), "-D", "-N", NODE])
            self._wait_until_idle()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            if "slurmctld" in self._processes:
                self._cancel_all_jobs()
            # slurmd first (it ends the job steps), then the controller, then munge.
            for name in ("slurmd", "slurmctld", "munged"):
                process = self._processes.pop(name, None)
                if process is not None:
                    _terminate(process)
            self._restore_config()
        finally:
            self._release_lock()

    # -- pieces ------------------------------------------------------------------------------
    def _acquire_lock(self, timeout_s: float = 1800) -> None:
        self._lock = open(LOCK_FILE, "w")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another test holds the local SLURM cluster ({LOCK_FILE})")
                time.sleep(2)

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _write_config(self) -> None:
        for sub in ("ctld", "slurmd"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        backup_dir = self.state_dir / "etc-slurm-backup"
        backup_dir.mkdir(exist_ok=True)
        SLURM_ETC.mkdir(parents=True, exist_ok=True)
        for name in CONFIG_FILES:
            original = SLURM_ETC / name
            # A file of ours left by a killed test is no original to restore.
            if original.exists() and not original.read_text(errors="replace").startswith(OUR_HEADER):
                self._backups[name] = Path(shutil.copy2(original, backup_dir / name))
            else:
                self._backups[name] = None
        files = config_files(self.state_dir, slurm_version(), os.cpu_count() or 1)
        for name in CONFIG_FILES:
            if name in files:
                (SLURM_ETC / name).write_text(files[name])
            elif self._backups[name] is None:
                # Not for this version (cgroup.conf before 24.05): a leftover of ours must not stay.
                (SLURM_ETC / name).unlink(missing_ok=True)

    def _restore_config(self) -> None:
        for name, backup in self._backups.items():
            target = SLURM_ETC / name
            if backup is None:
                target.unlink(missing_ok=True)
            else:
                shutil.copy2(backup, target)
        self._backups.clear()

    def _start_munged(self) -> None:
        if munge_works():
            return  # someone else's munged: use it, leave it running
        munge_user = pwd.getpwnam("munge")
        for directory in (MUNGE_RUN_DIR, Path("/var/lib/munge"), Path("/var/log/munge")):
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, munge_user.pw_uid, munge_user.pw_gid)
        MUNGE_RUN_DIR.chmod(0o755)
        self._start_daemon("munged", [which("munged"), "--foreground", "--force"], user="munge")
        deadline = time.monotonic() + 20
        while not munge_works():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("munged started but does not answer `munge -n | unmunge`" + self._logs())
            time.sleep(0.2)

    def _start_daemon(self, name: str, command: list[str], user: str | None = None) -> None:
        log = open(self.state_dir / f"{name}.out", "w")
        as_user = {"user": user, "group": user, "extra_groups": []} if user else {}
        self._processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, **as_user,
        )
        log.close()

    def _check_alive(self) -> None:
        for name, process in self._processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} during startup" + self._logs())

    def _wait_until_idle(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            result = subprocess.run(["sinfo", "-h", "-N", "-n", NODE, "-o", "%T"],
                                    capture_output=True, text=True, timeout=30)
            state = result.stdout.strip()
            if result.returncode == 0 and state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"node {NODE} not idle after {self.startup_timeout_s:.0f} s (state {state!r})" + self._logs())

    def _cancel_all_jobs(self) -> None:
        """Cancel whatever is still queued: all jobs of this private controller are the test's."""
        result = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30)
        job_ids = result.stdout.split()
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30)
            time.sleep(2)

    def _logs(self, tail_chars: int = 3000) -> str:
        text = ""
        for path in sorted(self.state_dir.glob("*.log")) + sorted(self.state_dir.glob("*.out")):
            text += f"\n--- {path.name} ---\n{path.read_text(errors='replace')[-tail_chars:]}"
        return text

    # -- queries for tests -------------------------------------------------------------------
    def gpu_step(self) -> GpuStep:
        """Run `srun --gpus=1 env -0` and return what SLURM set in that step: the GPU variables this
        SLURM exports for a fake GPU, which differ between versions."""
        result = subprocess.run(
            ["srun", "--gpus=1", "--ntasks=1", "--mem=100", f"--job-name={GPU_STEP_JOB_NAME}", "env", "-0"],
            capture_output=True, text=True, timeout=120, env=environment_without_slurm_or_gpus(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"`srun --gpus=1 env` failed ({result.returncode}): {result.stderr}" + self._logs())
        environ = dict(entry.split("=", 1) for entry in result.stdout.split("\0") if "=" in entry)
        variables = {name: environ[name] for name in SLURM_GPU_VARIABLES if name in environ}
        return GpuStep(job_id=environ["SLURM_JOB_ID"], variables=variables)

    def job_info(self, job_id: str) -> str:
        """`scontrol show job` of one job (finished jobs stay visible: MinJobAge is large)."""
        result = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)],
                                capture_output=True, text=True, timeout=30)
        return result.stdout + result.stderr

    def all_jobs(self) -> list[dict]:
        """Every job this controller has seen: id, state, Snakemake rule, TresPerJob.

        The executor plugin puts ``rule_<name>[_wildcards_<...>]`` in each job's comment.
        """
        result = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, timeout=30)
        jobs = []
        for line in result.stdout.splitlines():
            fields = dict(re.findall(r"(\w[\w/:]*)=(\S*)", line))
            if "JobId" not in fields:
                continue
            comment = fields.get("Comment", "")
            rule = comment.removeprefix("rule_").split("_wildcards_")[0] if comment.startswith("rule_") else ""
            jobs.append({
                "job_id": fields["JobId"], "state": fields.get("JobState", ""), "rule": rule,
                "tres_per_job": fields.get("TresPerJob", ""), "comment": comment,
            })
        return jobs


def _terminate(process: subprocess.Popen, timeout_s: float = 15) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)
