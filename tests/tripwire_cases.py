#!/usr/bin/env python3
"""The tripwire's evaluation cases (tests/tripwire.rs): attacks on a tree and benign
changes to it, made with real tools (AES-CTR from `cryptography`, git, cargo, gzip, tar)
and seeded, so that every run of the evaluation makes the same changes.

    tripwire_cases.py prepare CASE TREE   the case's starting state, before the baseline
    tripwire_cases.py churn SEED TREE     a day's ordinary edits between baseline runs
    tripwire_cases.py change CASE STEP TREE  the attack or the benign change (its STEPth run)
"""
import base64
import gzip
import os
import random
import shutil
import subprocess
import sys
import tarfile

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY = bytes(range(32))
BLOCK = 64 * 1024


def files(tree):
    """Every regular file under `tree`, relative, sorted."""
    found = []
    for root, dirs, names in os.walk(tree):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(root, n)
            if os.path.isfile(p) and not os.path.islink(p):
                found.append(os.path.relpath(p, tree))
    return found


def aes(data):
    enc = Cipher(algorithms.AES(KEY), modes.CTR(os.urandom(16))).encryptor()
    return enc.update(data) + enc.finalize()


def encrypt(path, mode):
    """Encrypts a file in place, as ransomware does: whole, its first 4 KiB, every other
    64 KiB block, or whole and then Base64-encoded."""
    with open(path, "rb") as f:
        data = f.read()
    if mode == "full":
        out = aes(data)
    elif mode == "partial":
        out = aes(data[:4096]) + data[4096:]
    elif mode == "intermittent":
        out = b"".join(
            aes(data[i:i + BLOCK]) if (i // BLOCK) % 2 == 0 else data[i:i + BLOCK]
            for i in range(0, len(data), BLOCK)
        )
    elif mode == "base64":
        out = base64.b64encode(aes(data))
    else:
        raise SystemExit(f"unknown mode {mode}")
    with open(path, "wb") as f:
        f.write(out)


def text(rng, n):
    words = ["backup", "restore", "chunk", "snapshot", "lock", "retain", "target", "job",
             "select", "insert", "value", "update", "where", "from", "order", "42", "2026"]
    lines = []
    size = 0
    while size < n:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        lines.append(line)
        size += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def run(*argv, cwd=None, env=None):
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def binaries():
    """Real executables to stand for a package's files: ELF files from /usr/bin."""
    found = []
    for n in sorted(os.listdir("/usr/bin")):
        p = os.path.join("/usr/bin", n)
        if os.path.isfile(p) and not os.path.islink(p) and 8192 < os.path.getsize(p) < 4 << 20:
            with open(p, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(p)
    return found


def git_env():
    env = dict(os.environ)
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org", GIT_CONFIG_NOSYSTEM="1", HOME=os.environ.get("HOME", "/tmp"))
    return env


def prepare(case, tree):
    rng = random.Random(case)
    if case == "git-gc":
        repo = os.path.join(tree, "repo")
        os.makedirs(repo)
        run("git", "init", "-q", repo, env=git_env())
        for i in range(1500):
            d = os.path.join(repo, f"src/m{i % 40}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i}.txt"), "wb") as f:
                f.write(text(rng, rng.randint(200, 3000)))
        run("git", "-c", "gc.auto=0", "add", "-A", cwd=repo, env=git_env())
        run("git", "-c", "gc.auto=0", "commit", "-qm", "one", cwd=repo, env=git_env())
        for i in rng.sample(range(1500), 400):
            with open(os.path.join(repo, f"src/m{i % 40}/f{i}.txt"), "ab") as f:
                f.write(text(rng, 100))
        run("git", "-c", "gc.auto=0", "commit", "-qam", "two", cwd=repo, env=git_env())
    elif case == "package-upgrade":
        d = os.path.join(tree, "opt/pkg/bin")
        os.makedirs(d)
        for p in binaries()[:80]:
            shutil.copyfile(p, os.path.join(d, os.path.basename(p)))
    elif case == "log-rotate":
        d = os.path.join(tree, "var/log")
        os.makedirs(d)
        for i in range(150):
            with open(os.path.join(d, f"svc{i}.log"), "wb") as f:
                f.write(text(rng, 40_000))
            for k in (1, 2, 3):
                with gzip.open(os.path.join(d, f"svc{i}.log.{k}.gz"), "wb") as f:
                    f.write(text(rng, 40_000))
    elif case == "db-dump":
        d = os.path.join(tree, "db")
        os.makedirs(d)
        for t in range(20):
            write_dump(os.path.join(d, f"table{t}.sql"), t, 0)
    elif case == "rm-build":
        build = os.path.join(tree, "build")
        os.makedirs(build)
        for i in range(2400):
            sub = os.path.join(build, f"obj/unit{i % 60}")
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, f"part{i}.o"), "wb") as f:
                f.write(b"\x7fELF\x02\x01\x01" + text(rng, rng.randint(500, 20_000)))
    elif case == "cargo-build":
        run("cargo", "new", "-q", "--vcs", "none", "--bin", os.path.join(tree, "proj"), env=cargo_env())


def write_dump(path, table, day):
    rng = random.Random(table)
    rows = []
    for r in range(12_000):
        value = rng.randint(0, 10**9)
        if random.Random(f"{table}-{r}-{day}").random() < 0.03 and day:
            value = random.Random(f"{table}-{r}-{day}").randint(0, 10**9)
        rows.append(f"INSERT INTO table{table} VALUES ({r}, 'name {r}', {value}, '2026-12-0{1 + day % 9}');\n")
    for r in range(day * 100):
        rows.append(f"INSERT INTO table{table} VALUES ({12_000 + r}, 'new {r}', {r}, '2026-12-07');\n")
    with open(path + ".tmp", "w") as f:
        f.write(f"-- dump of table{table}, day {day}\n")
        f.writelines(rows)
    os.replace(path + ".tmp", path)


def cargo_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGO_") and k not in ("RUSTFLAGS",)}
    return env


def churn(seed, tree):
    """A day's edits: a few text files appended to, two new notes, one file removed."""
    rng = random.Random(seed)
    all_files = [f for f in files(tree) if f.endswith((".html", ".md", ".rs", ".txt", ".toml"))]
    for f in rng.sample(all_files, min(5, len(all_files))):
        with open(os.path.join(tree, f), "ab") as out:
            out.write(text(rng, 300))
    for k in range(2):
        d = os.path.dirname(rng.choice(all_files))
        with open(os.path.join(tree, d, f"note-{seed}-{k}.txt"), "wb") as out:
            out.write(text(rng, 2000))
    victim = rng.choice(all_files)
    if os.path.exists(os.path.join(tree, victim)):
        os.remove(os.path.join(tree, victim))


def change(case, tree, step):
    rng = random.Random(f"{case}-{step}")
    every = files(tree)
    if case in ("aes-full", "aes-partial", "aes-intermittent", "aes-base64"):
        for f in every:
            encrypt(os.path.join(tree, f), case[4:])
    elif case == "aes-rename":
        for f in every:
            p = os.path.join(tree, f)
            encrypt(p, "full")
            os.rename(p, p + ".locked")
    elif case == "delete-60":
        for f in random.Random(case).sample(every, len(every) * 6 // 10):
            os.remove(os.path.join(tree, f))
    elif case == "slow-5":
        # Each step encrypts the next 5 % of the files, in a fixed random order.
        order = sorted(every)
        random.Random(case).shuffle(order)
        per = max(1, len(order) // 20)
        done = os.path.join(os.path.dirname(tree), "slow-done")
        already = set(open(done).read().split("\n")) if os.path.exists(done) else set()
        todo = [f for f in order if f not in already][:per]
        for f in todo:
            encrypt(os.path.join(tree, f), "full")
        with open(done, "a") as out:
            out.write("".join(f + "\n" for f in todo))
    elif case == "cargo-build":
        run("cargo", "build", "-q", "--offline", cwd=os.path.join(tree, "proj"), env=cargo_env())
    elif case == "git-gc":
        run("git", "gc", "-q", cwd=os.path.join(tree, "repo"), env=git_env())
    elif case == "package-upgrade":
        d = os.path.join(tree, "opt/pkg/bin")
        names = sorted(os.listdir(d))
        newer = binaries()[80:80 + len(names)]
        for name, src in zip(names, newer):
            shutil.copyfile(src, os.path.join(d, name + ".dpkg-new"))
            os.replace(os.path.join(d, name + ".dpkg-new"), os.path.join(d, name))
    elif case == "log-rotate":
        d = os.path.join(tree, "var/log")
        for i in range(150):
            base = os.path.join(d, f"svc{i}.log")
            os.remove(base + ".3.gz")
            os.rename(base + ".2.gz", base + ".3.gz")
            os.rename(base + ".1.gz", base + ".2.gz")
            with open(base, "rb") as src, gzip.open(base + ".1.gz", "wb") as out:
                shutil.copyfileobj(src, out)
            with open(base, "wb") as f:
                f.write(text(rng, 500))
    elif case == "db-dump":
        for t in range(20):
            write_dump(os.path.join(tree, "db", f"table{t}.sql"), t, 1)
    elif case == "photo-import":
        d = os.path.join(tree, "photos/2026-12-07")
        os.makedirs(d)
        for i in range(200):
            body = os.urandom(rng.randint(50_000, 300_000))
            with open(os.path.join(d, f"IMG_{i:04}.jpg"), "wb") as f:
                f.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + body + b"\xff\xd9")
    elif case == "tarball":
        victim = "reference" if os.path.isdir(os.path.join(tree, "reference")) else sorted(os.listdir(tree))[0]
        with tarfile.open(os.path.join(tree, victim + ".tar.gz"), "w:gz") as tar:
            tar.add(os.path.join(tree, victim), arcname=victim)
        shutil.rmtree(os.path.join(tree, victim))
    elif case == "rm-build":
        shutil.rmtree(os.path.join(tree, "build"))
    else:
        raise SystemExit(f"unknown case {case}")


def main():
    what = sys.argv[1]
    if what == "prepare":
        prepare(sys.argv[2], sys.argv[3])
    elif what == "churn":
        churn(int(sys.argv[2]), sys.argv[3])
    elif what == "change":
        change(sys.argv[2], sys.argv[4], int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
