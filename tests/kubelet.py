"""Plays what the kubelet does with deploy/kubernetes.yaml around a real coffer, as root.

Reads the manifest's Deployment and ConfigMap and the Containerfile's ENTRYPOINT, makes
each volume under ROOT the way the kubelet does (a fresh PersistentVolumeClaim's root is
root's 0755; ConfigMap and Secret files are root's, written with `defaultMode` behind
the `..data` symlink; then fsGroup ownership: group set, `g+rw` (`g+r` on read-only
volumes) and `g+rwxs` on directories, skipped under `OnRootMismatch` when the root
already matches), rewrites the mount paths in the config and arguments to where those
directories are, and runs each container's command as the pod's user, group and
fsGroup with every capability dropped and no new privileges:

1. first start: the init container, `check-config`, a backup of the job, and the daemon
   until its readiness probe answers; /metrics with the Secret's token, and without it;
2. a restart (the kubelet applies ownership again): the same;
3. what `fsGroupChangePolicy: Always` would do: repo.secret becomes group-writable, and
   coffer refuses it.

usage: kubelet.py MANIFEST CONTAINERFILE COFFER ROOT TARGET_URL RECIPIENT PORT
Prints a line per step; exits 1 naming the first expectation that failed.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

RW_MASK, RO_MASK, EXEC_MASK = 0o660, 0o440, 0o110


def fail(what):
    print(f"FAILED: {what}", flush=True)
    sys.exit(1)


def step(what):
    print(f"ok: {what}", flush=True)


def set_ownership(root, fs_group, read_only, policy):
    """The kubelet's SetVolumeOwnership: every file gets the group and the mask's bits."""
    if policy == "OnRootMismatch":
        st = os.stat(root)
        mask = (RO_MASK if read_only else RW_MASK) | EXEC_MASK
        if st.st_gid == fs_group and st.st_mode & mask == mask and st.st_mode & 0o2000:
            return
    def own(path):
        if os.path.islink(path):
            os.lchown(path, -1, fs_group)  # the kubelet changes no link's mode
            return
        mask = RO_MASK if read_only else RW_MASK
        if os.path.isdir(path):
            mask |= 0o2000 | EXEC_MASK
        os.chown(path, -1, fs_group)
        os.chmod(path, (os.lstat(path).st_mode & 0o7777) | mask)

    own(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            own(os.path.join(dirpath, name))


def atomic_writer(dir_, files, mode):
    """A ConfigMap or Secret volume: root's files behind `..data`, with `mode`."""
    if os.path.exists(dir_):
        shutil.rmtree(dir_)
    stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{os.getpid()}"
    os.makedirs(os.path.join(dir_, stamp))
    os.chmod(dir_, 0o755)
    os.chmod(os.path.join(dir_, stamp), 0o755)
    for name, text in files.items():
        path = os.path.join(dir_, stamp, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        os.symlink(os.path.join("..data", name), os.path.join(dir_, name))
    os.symlink(stamp, os.path.join(dir_, "..data"))


class Pod:
    def __init__(self, manifest, containerfile, coffer, root, target_url, recipient, port):
        docs = list(yaml.safe_load_all(open(manifest)))
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        self.config_map = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
        self.spec = deployment["spec"]["template"]["spec"]
        sc = self.spec["securityContext"]
        self.uid, self.gid, self.fs_group = sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]
        self.policy = sc.get("fsGroupChangePolicy", "Always")
        self.coffer, self.root, self.port = coffer, root, port
        self.target_url, self.recipient = target_url, recipient
        self.container = self.spec["containers"][0]
        self.init = self.spec["initContainers"][0]
        for c in self.spec["initContainers"] + self.spec["containers"]:
            locked = c["securityContext"]
            if locked.get("allowPrivilegeEscalation") is not False or locked["capabilities"]["drop"] != ["ALL"]:
                fail(f"container {c['name']} keeps privileges: {locked}")
        self.volumes = {v["name"]: v for v in self.spec["volumes"]}
        self.mounts = {m["mountPath"]: m for m in self.container["volumeMounts"]}
        lines = open(containerfile).read().splitlines()
        argv = json.loads(next(l for l in lines if l.startswith("ENTRYPOINT "))[len("ENTRYPOINT ") :])
        self.entry = argv[argv.index("--") + 2 :]  # after tini, --, and the binary
        health = next(l for l in lines if l.strip().startswith("CMD [") and "/health" in l)
        self.healthcheck = json.loads(health.strip()[len("CMD ") :])
        self.daemon = None

    def host(self, path):
        """Where a path inside the container is on this machine."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            if path == mount or path.startswith(mount + "/"):
                return os.path.join(self.root, "volumes", self.mounts[mount]["name"]) + path[len(mount) :]
        return path

    def rewrite(self, text):
        """The config's absolute paths, each moved to where its volume is."""
        return re.sub(r'"(/[^"]*)"', lambda m: f'"{self.host(m.group(1))}"', text)

    def start(self, secrets, policy=None):
        """Makes the volumes as the kubelet does at a pod's start."""
        policy = policy or self.policy
        for name, volume in self.volumes.items():
            dir_ = os.path.join(self.root, "volumes", name)
            read_only = False
            if "configMap" in volume:
                config = self.config_map["coffer.toml"]
                config = config.replace('"s3://example-backups/coffer"', f'"{self.target_url}"')
                config = config.replace('region = "eu-central-1"\n', "")
                config = config.replace("0.0.0.0:9477", f"0.0.0.0:{self.port}")
                config = config.replace(config.split('recipients = ["')[1].split('"')[0], self.recipient)
                atomic_writer(dir_, {"coffer.toml": self.rewrite(config)}, volume["configMap"].get("defaultMode", 0o644))
                read_only = True
            elif "secret" in volume:
                secret = secrets[volume["secret"]["secretName"]]
                atomic_writer(dir_, secret, volume["secret"].get("defaultMode", 0o644))
                read_only = True
            elif "emptyDir" in volume:
                if os.path.exists(dir_):
                    shutil.rmtree(dir_)
                os.makedirs(dir_)
                os.chmod(dir_, 0o777)
            elif volume["persistentVolumeClaim"].get("readOnly"):
                continue  # a read-only claim keeps its owners: the kubelet skips it
            elif not os.path.exists(dir_):
                os.makedirs(dir_)  # a fresh file system's root
                os.chmod(dir_, 0o755)
            set_ownership(dir_, self.fs_group, read_only, policy)

    def run(self, container, args, env):
        """`coffer ARGS` in `container`, after the image's ENTRYPOINT."""
        args = [self.host(a) if a.startswith("/") else a for a in self.entry + args]
        return self.run_as_pod([self.coffer] + args, env)

    def run_as_pod(self, cmd, env):
        groups = ",".join(str(g) for g in [self.fs_group] + self.spec["securityContext"].get("supplementalGroups", []))
        cmd = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", f"--groups={groups}", "--no-new-privs",
               "--inh-caps=-all", "--bounding-set=-all", "--"] + cmd
        return subprocess.Popen(cmd, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run_ok(self, container, args, env, expect=0):
        p = self.run(container, args, env)
        out, _ = p.communicate(timeout=300)
        if p.returncode != expect:
            fail(f"`coffer {' '.join(args)}` in {container['name']} exited {p.returncode}, not {expect}:\n{out}")
        return out

    def probe(self, probe, token=None):
        path = probe["httpGet"]["path"]
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return None, ""


def boot(pod, env, token, first):
    """One start of the pod: its init container, then its container until ready."""
    out = pod.run_ok(pod.init, pod.init["args"], env)
    if first and "repository fingerprint" not in out:
        fail(f"the init container printed no fingerprint:\n{out}")
    step(f"init container ({'made the repository' if first else 'found it'})")
    pod.run_ok(pod.container, ["check-config"], env)
    step("check-config passes as uid %d with fsGroup %d" % (pod.uid, pod.fs_group))
    pod.run_ok(pod.container, ["backup", "data"], env)
    step("a backup of the job, reading the data volume")
    daemon = pod.run(pod.container, pod.container["args"], env)
    try:
        deadline = time.time() + 20
        while True:
            code, body = pod.probe(pod.container["readinessProbe"])
            if code == 200:
                break
            if time.time() > deadline or daemon.poll() is not None:
                daemon.kill()
                fail(f"the readiness probe got {code} {body}; the daemon said:\n{daemon.communicate()[0]}")
            time.sleep(0.2)
        if json.loads(body) != {"status": "ok"}:
            fail(f"the probe, without the token, got {body!r}")
        code, _ = pod.probe(pod.container["livenessProbe"])
        if code != 200:
            fail(f"the liveness probe got {code}")
        step("readiness and liveness probes answer 200, the status alone")
        check = pod.run_as_pod([a.replace("/9477", f"/{pod.port}") for a in pod.healthcheck], env)
        if check.wait(timeout=10) != 0:
            fail(f"the Containerfile's HEALTHCHECK exited {check.returncode}: {check.communicate()[0]}")
        step("the Containerfile's HEALTHCHECK passes")
        code, metrics = pod.probe({"httpGet": {"path": "/metrics"}}, token)
        if code != 200 or "coffer_job_last_success_timestamp_seconds" not in metrics:
            fail(f"/metrics with the Secret's token got {code}")
        if pod.probe({"httpGet": {"path": "/metrics"}})[0] != 401:
            fail("/metrics answered without the token")
        step("/metrics answers with the Secret's token, 401 without")
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=90)
    if daemon.returncode != 0:
        fail(f"the daemon exited {daemon.returncode} on SIGTERM:\n{out}")
    step("the daemon stops on SIGTERM")


def main():
    manifest, containerfile, coffer, root, target_url, recipient, port = sys.argv[1:8]
    pod = Pod(manifest, containerfile, coffer, root, target_url, recipient, int(port))
    token = "kubelet-test-token-" + os.urandom(8).hex()
    secrets = {"coffer-metrics-token": {"token": token}}
    env = {"PATH": os.environ["PATH"], "HOME": pod.host("/var/lib/coffer")}
    for name in ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]:
        if name in os.environ:
            env[name] = os.environ[name]  # the coffer-target-credentials Secret
    data = pod.host("/data")  # the claim to back up: root's files, world-readable
    os.makedirs(os.path.join(data, "docs"))
    for i in range(20):
        with open(os.path.join(data, "docs", f"file-{i}.txt"), "w") as f:
            f.write(f"line {i}\n" * (i * 100 + 1))
    os.chmod(root, 0o755)

    pod.start(secrets)
    boot(pod, env, token, first=True)
    secret = pod.host("/var/lib/coffer/state/repo.secret")
    mode = os.stat(secret).st_mode & 0o777
    token_mode = os.stat(pod.host("/run/coffer/token")).st_mode & 0o777
    step(f"after the first start: repo.secret {mode:o}, the token {token_mode:o} (group {pod.fs_group})")

    pod.start(secrets)
    boot(pod, env, token, first=False)
    if os.stat(secret).st_mode & 0o777 != mode:
        fail(f"the restart changed repo.secret's mode to {os.stat(secret).st_mode & 0o777:o}")
    step("a restart leaves repo.secret as it was")

    pod.start(secrets, policy="Always")
    out = pod.run_ok(pod.container, ["check-config"], env, expect=1)
    if "repo.secret" not in out or "chmod 600" not in out:
        fail(f"check-config under fsGroupChangePolicy Always did not name repo.secret:\n{out}")
    step(f"under fsGroupChangePolicy: Always, repo.secret {os.stat(secret).st_mode & 0o777:o} is refused")


if __name__ == "__main__":
    main()
