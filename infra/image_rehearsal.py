"""infra/Dockerfile without Docker: its own lines, run in a Debian bookworm root made by debootstrap.

Where there is no Docker engine (this project's machines have none), this builds the image the
way `docker build -f infra/Dockerfile .` would, instruction by instruction, and then uses it:

- FROM python:3.11-slim-bookworm: a Debian bookworm root (`debootstrap --variant=minbase`) with
  Debian's python3.11, in place of the official image (same distribution and Python minor; its
  Python is built from source into /usr/local instead). The one stand-in.
- ARG, ENV, WORKDIR, USER, VOLUME, CMD as Docker reads them; COPY with `--chown`, the build context
  filtered by .dockerignore; RUN as `/bin/sh -c` in that root (chroot), as USER, in WORKDIR, with the
  ARGs and ENVs, and PyPI as the only package source (this machine's pip settings stay outside).
- Then containers, as Docker makes them: each an overlay over the image (its own writable layer,
  gone with it), the data volume mounted at VOLUME. In one, the image's user, environment and
  folder run `cft --version`, the smoke pipeline (`cft run -c configs/smoke.yaml`, on the volume)
  and the CMD's program with `--help`; in another, an arbitrary uid of group 0 (as OpenShift runs
  containers) runs the smoke pipeline again.

An instruction this script does not know fails it, so the rehearsal cannot silently skip a line
the Dockerfile gains. Needs root (chroot, mounts), debootstrap (Debian: `apt-get install
debootstrap`), Debian's mirror and PyPI. About 11 minutes on 2 cores (2026-12-07, with a study
running beside it), most of it the install (torch's CUDA build from PyPI) and the two smoke runs.

    python3 infra/image_rehearsal.py [--keep ROOT]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DOCKERFILE = PROJECT / "infra" / "Dockerfile"
BASE = "python:3.11-slim-bookworm"  # the FROM this stands in for
SUITE = "bookworm"
BASE_PACKAGES = ["python3.11", "python3.11-venv", "ca-certificates"]
# What the root needs from this machine to reach PyPI: its CA bundle (a proxy's CA, where there is
# one: the same file a `docker build` behind such a proxy is given).
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments and blank lines dropped, continued lines
    (a trailing backslash) joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):  # (a comment inside a continued instruction)
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        word, _, rest = whole.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's `patterns` leave `relative` (a path in the context, with /) out, as
    Docker matches them: a pattern matches the path or a folder above it, segment by segment (`*`
    stays within one), and `**/x` matches x at any depth."""
    parts = relative.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                return True
            continue
        segments = pattern.strip("/").split("/")
        if len(segments) <= len(parts) and all(map(fnmatch.fnmatchcase, parts[:len(segments)], segments)):
            return True
    return False


def dockerignore() -> list[str]:
    path = PROJECT / ".dockerignore"
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def env_pairs(text: str) -> dict[str, str]:
    """ENV/ARG `k=v k2="v 2"` (or the old `ENV k v`)."""
    words = shlex.split(text)
    if len(words) >= 2 and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) if "=" in w else (w, "") for w in words)


def expand(value: str, env: dict[str, str]) -> str:
    """$NAME and ${NAME} in an ENV value, from what is set so far (Docker does this for ENV)."""
    for name in sorted(env, key=len, reverse=True):
        value = value.replace("${" + name + "}", env[name]).replace("$" + name, env[name])
    return value


class Root:
    """A chroot'ed Debian root with /proc, /dev and /sys mounted while it is used: the image while
    it is built, or a container of it (`container`)."""

    def __init__(self, path: Path):
        self.path, self.mounted = path, []

    def mount(self) -> None:
        for what, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--rbind", "/dev"]), ("sys", ["--rbind", "/sys"])):
            target = self.path / what
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", *args, str(target)], check=True)
            self.mounted.append(target)

    @classmethod
    def container(cls, image: Path, layer: Path, volume: Path, at: str) -> Root:
        """A fresh container of the image at `image`, as Docker makes one: an overlay whose lower
        layer is the image, read-only, and whose upper one (under `layer`) is this container's own,
        gone with it; the named volume `volume` mounted at the image's VOLUME path `at`."""
        for name in ("upper", "work", "merged"):
            (layer / name).mkdir(parents=True)
        root = cls(layer / "merged")
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={image},upperdir={layer / 'upper'},workdir={layer / 'work'}", str(root.path)],
                       check=True)
        root.mounted.append(root.path)
        subprocess.run(["mount", "--bind", str(volume), str(root.path / at.lstrip("/"))], check=True)
        root.mounted.append(root.path / at.lstrip("/"))
        root.mount()
        return root

    def unmount(self) -> bool:
        """Unmount what `mount` mounted; whether nothing of it is still mounted (the root must not
        be removed before: its dev/ would be this machine's /dev)."""
        for target in reversed(self.mounted):
            if subprocess.run(["umount", "-R", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-R", "-l", str(target)], capture_output=True)
        self.mounted = [t for t in self.mounted if subprocess.run(["mountpoint", "-q", str(t)]).returncode == 0]
        return not self.mounted

    def run(self, command: str, user: str, workdir: str, env: dict[str, str], log: Path | None = None) -> int:
        """`/bin/sh -c command` inside the root, as Docker's RUN and a container's command run."""
        # (USER as Docker reads it: a name, whose primary group goes with it, or uid[:gid])
        argv = ["chroot", "--userspec=0:0" if user == "root" else f"--userspec={user}", str(self.path),
                "/bin/sh", "-c", f"cd {shlex.quote(workdir)} && {command}"]
        out = log.open("a") if log else None
        try:
            return subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None).returncode
        finally:
            if out:
                out.close()


def build(root: Root, log: Path) -> dict:
    """Run the Dockerfile's instructions in `root`; the image's config (user, workdir, env, cmd)."""
    image = {"user": "root", "workdir": "/", "env": {}, "args": {}, "cmd": None, "volumes": []}
    ignore = dockerignore()
    for word, rest in instructions(DOCKERFILE.read_text()):
        print(f"== {word} {rest}"[:160], flush=True)
        if word == "FROM":
            assert rest == BASE, f"the rehearsal stands in for {BASE}, not {rest}: update BASE and BASE_PACKAGES"
            base(root, log)
        elif word == "ARG":
            image["args"].update(env_pairs(rest))
        elif word == "ENV":
            for key, value in env_pairs(rest).items():
                image["env"][key] = expand(value, {**image["env"], "PATH": container_env(image)["PATH"]})
        elif word == "WORKDIR":
            image["workdir"] = rest
            (root.path / rest.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif word == "USER":
            image["user"] = rest
        elif word == "COPY":
            copy(root, rest, ignore)
        elif word == "RUN":
            env = {**container_env(image), **image["args"]}
            if (code := root.run(rest, image["user"], image["workdir"], env, log)) != 0:
                sys.exit(f"RUN failed (exit {code}): {rest}\n" + log.read_text()[-4000:])
        elif word == "VOLUME":
            image["volumes"].append(rest)
        elif word == "CMD":
            image["cmd"] = json.loads(rest)
        else:
            sys.exit(f"{DOCKERFILE}: {word} is an instruction this rehearsal does not run: teach it")
    return image


def container_env(image: dict) -> dict[str, str]:
    """The environment a RUN or the container gets: Docker's default PATH, HOME, the image's ENV,
    and this machine's CA bundle for PyPI (nothing else of this machine's, its pip settings included)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root" if image["user"] == "root" else f"/home/{image['user']}",
           "PIP_CERT": str(CA_BUNDLE), "SSL_CERT_FILE": str(CA_BUNDLE), "REQUESTS_CA_BUNDLE": str(CA_BUNDLE)}
    return {**env, **image["env"]}


def base(root: Root, log: Path) -> None:
    """The stand-in for the FROM image: Debian bookworm and its python3.11."""
    with log.open("a") as out:
        subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(root.path), "http://deb.debian.org/debian"],
                       check=True, stdout=out, stderr=subprocess.STDOUT)
    shutil.copy("/etc/resolv.conf", root.path / "etc/resolv.conf")
    root.mount()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    command = f"apt-get update -q && apt-get install -y -q --no-install-recommends {' '.join(BASE_PACKAGES)}"
    if root.run(command, "root", "/", env, log) != 0:
        sys.exit("the base's python3.11 did not install:\n" + log.read_text()[-3000:])
    shutil.copy(CA_BUNDLE, root.path / str(CA_BUNDLE).lstrip("/"))  # (after ca-certificates wrote its own)


def copy(root: Root, rest: str, ignore: list[str]) -> None:
    """COPY [--chown=u:g] . DEST: the build context (the project) less .dockerignore's paths."""
    words = shlex.split(rest)
    chown = next((w.split("=", 1)[1] for w in words if w.startswith("--chown=")), None)
    sources, dest = [w for w in words if not w.startswith("--")][:-1], words[-1]
    assert sources == ["."], f"COPY of {sources}: the rehearsal copies the whole context only"
    target = root.path / dest.lstrip("/")
    for path in sorted(PROJECT.rglob("*")):
        relative = path.relative_to(PROJECT).as_posix()
        if ignored(relative, ignore):
            continue
        if path.is_dir():
            (target / relative).mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)
    if chown and root.run(f"chown -R {shlex.quote(chown)} {shlex.quote(dest)}", "root", "/",
                          container_env({"user": "root", "env": {}}), None) != 0:
        sys.exit(f"COPY --chown={chown}: no such user or group in the image yet")


def use(image_root: Path, image: dict, work: Path, log: Path, started: list[Root]) -> None:
    """The image as `docker run` runs it, each run in a fresh container with the one data volume:
    as its own user, `cft --version`, the smoke pipeline on the volume and the CMD's program; then,
    as an arbitrary uid of group 0 (OpenShift's way: no passwd entry), the smoke pipeline again,
    with a home it may write."""
    env = container_env(image)
    (at,) = image["volumes"]
    volume = work / "volume"  # (a new named volume starts as a copy of the image's folder, owner and mode included)
    subprocess.run(["cp", "-a", str(image_root / at.lstrip("/")), str(volume)], check=True)
    cmd = f"{shlex.quote(image['cmd'][0])} {' '.join(map(shlex.quote, image['cmd'][1:3]))} --help >/dev/null"
    containers = [
        (image["user"], ["cft --version", "cft run -c configs/smoke.yaml",
                         'test -n "$(ls data/mlflow)"', cmd]),  # (the MLflow store: on the volume)
        ("12345:0", ["cft run -c configs/smoke.yaml --set data.data_root=/app/data/uid-12345",
                     'test -n "$(ls data/uid-12345/mlflow)" && test -w "$HOME"']),
    ]
    for number, (user, commands) in enumerate(containers):
        container = Root.container(image_root, work / f"container-{number}", volume, at)
        started.append(container)
        for command in commands:
            began = time.time()
            code = container.run(command, user, image["workdir"], env, log)
            print(f"   container {number}, as {user}: {command}: exit {code} ({time.time() - began:.0f} s)", flush=True)
            if code != 0:
                sys.exit(log.read_text()[-4000:])
        if not container.unmount():
            sys.exit(f"container {number} is still mounted: {container.mounted}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Build in this folder and keep it (default: a temporary one, removed).")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        print("error: needs root and debootstrap (Debian: apt-get install debootstrap)", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="cft-image."))
    work.mkdir(parents=True, exist_ok=True)
    root, log = Root(work / "root"), work / "build.log"
    roots = [root]  # (everything mounted, so that nothing is removed while it is)
    print(f"building {DOCKERFILE.relative_to(PROJECT)} into {root.path} (log: {log})", flush=True)
    started = time.time()
    try:
        image = build(root, log)
        root.unmount()  # (the image is a container's read-only lower layer from here on)
        size = subprocess.run(["du", "-shx", str(root.path)], capture_output=True, text=True).stdout.split()[0]
        print(f"built in {time.time() - started:.0f} s; {size} in the image", flush=True)
        use(root.path, image, work, log, roots)
    finally:
        mounted = [path for r in reversed(roots) if not r.unmount() for path in r.mounted]
        if mounted:
            print(f"warning: still mounted, so {work} is kept: {mounted}", file=sys.stderr)
        elif not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"image rehearsal passed in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
