"""The GPU kit: wheels of verl 0.9.1 and what a lent GPU machine lacks for `gpu_check.py --engine`.

The lent machine (docs/gpu.md) has Python 3.12, a CUDA torch, transformers, numpy, pandas, pyarrow,
safetensors, tokenizers, peft, accelerate, psutil, msgpack, aiohttp and grpcio, and no network. This
script assembles, here, the wheels that verl's in-process FSDP2 engine imports beyond those, into an
ignored folder that travels with the run (`carry: [".gpu_kit"]`), and installs them there:

  python scripts/gpu_kit.py build                        # .gpu_kit/, Python 3.12 manylinux x86_64
  python3 scripts/gpu_kit.py install --target /tmp/kit  # on the GPU machine: only from .gpu_kit
  python scripts/gpu_kit.py prove                        # here: a 3.11 kit in a fresh venv, engine check on CPU

No Ray: its wheel alone is 79 MB, and an in-process single-rank engine only imports a handful of its
names; `gpu_check.py --engine` supplies those through an import shim (docs/gpu.md). `install` runs
`pip install --no-index --no-deps --find-links .gpu_kit` for the kit's distributions that are not
already installed, so the image's own packages (and its torch) are never replaced.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DEST = os.path.join(ROOT, ".gpu_kit")
LIMIT_MIB = 60

# What `import verl`, its FSDP2 engine worker, srpo_verl's worker and the check import, less the
# lent image's packages and their own requirements (found by running the check in a venv of only
# those: `prove`). Versions are the ones the suite runs with.
KIT = {
    "verl": "0.9.1",
    # configuration (Hydra composes srpo_trainer.yaml)
    "hydra-core": "1.3.8",
    "omegaconf": "2.3.1",
    "antlr4-python3-runtime": "4.9.3",  # published as a source archive only: built here into a wheel
    # verl's batches
    "tensordict": "0.10.0",
    "pyvers": "0.1.0",
    "cloudpickle": "3.1.3",
    "orjson": "3.13.0",
    "importlib-metadata": "10.2.0",
    "zipp": "4.1.2",
    # imported by verl's utilities and workers at module level
    "codetiming": "1.4.0",
    "TransferQueue": "0.1.11",
    "pyzmq": "27.3.0",
    "msgspec": "0.23.0",
    "datasets": "5.2.0",
    "dill": "0.4.1",
    "multiprocess": "0.70.19",
    "xxhash": "4.1.0",
    "fastapi": "0.165.0",
    "starlette": "1.10.0",
    "opentelemetry-api": "1.45.2",
    "uvicorn": "0.55.0",
    "pillow": "13.0.0",  # verl.utils.dataset (imported by the FSDP engine); not a requirement of the image's
    # fastapi's and uvicorn's own requirements, in case the image does not have them (kept if it does)
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "annotated-doc": "0.0.7",
    "anyio": "4.16.0",
    "h11": "0.16.0",
    "click": "8.5.1",
}
SOURCE_ONLY = {"antlr4-python3-runtime"}
MANIFEST = "kit.json"


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pip(python: str, *args: str, quiet: bool = True) -> None:
    cmd = [python, "-m", "pip", *args] + (["-q"] if quiet else [])
    subprocess.run(cmd, check=True)


def folder_mib(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2**20


def build(dest: str, python_version: str) -> float:
    """Download (or build) one wheel per KIT entry for CPython `python_version`, manylinux x86_64,
    into `dest` (emptied first); returns the kit's size in MiB and fails above LIMIT_MIB."""
    staging = tempfile.mkdtemp(prefix=".gpu_kit_", dir=os.path.dirname(os.path.abspath(dest)))
    try:
        binary = [f"{name}=={version}" for name, version in KIT.items() if name not in SOURCE_ONLY]
        # --no-deps: the list is the closure already; pip's resolver would pull Ray and wandb (verl's
        # declared requirements) and the image's packages again. Newer manylinux tags first.
        platforms = ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "linux_x86_64"]
        pip(
            sys.executable,
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            *[arg for p in platforms for arg in ("--platform", p)],
            "-d",
            staging,
            *binary,
        )
        for name in SOURCE_ONLY:  # pure Python: a py3-none-any wheel serves every version
            pip(sys.executable, "wheel", "--no-deps", "-w", staging, f"{name}=={KIT[name]}")
        wheels = sorted(f for f in os.listdir(staging) if f.endswith(".whl"))
        found = {canonical(w.split("-")[0]) for w in wheels}
        missing = sorted(n for n in KIT if canonical(n) not in found)
        if missing:
            raise SystemExit(f"no wheel for {missing}")
        for f in os.listdir(staging):
            if not f.endswith(".whl"):
                os.remove(os.path.join(staging, f))
        with open(os.path.join(staging, MANIFEST), "w") as f:
            json.dump({"python": python_version, "packages": KIT, "wheels": wheels}, f, indent=1)
        size = folder_mib(staging)
        if size > LIMIT_MIB:
            raise SystemExit(f"the kit is {size:.1f} MiB, over {LIMIT_MIB} MiB")
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"kit for Python {python_version}: {len(wheels)} wheels, {size:.1f} MiB in {dest}")
    return size


def missing_packages(dest: str) -> list[str]:
    """The kit's requirements (name==version) that no installed distribution of that name meets."""
    with open(os.path.join(dest, MANIFEST)) as f:
        kit = json.load(f)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if kit["python"] != here:
        raise SystemExit(f"{dest} holds wheels for Python {kit['python']}, this is Python {here}")
    wanted = []
    for name, version in kit["packages"].items():
        try:
            importlib.metadata.version(name)  # the image's own copy wins, whatever its version
        except importlib.metadata.PackageNotFoundError:
            wanted.append(f"{name}=={version}")
    return wanted


def install(dest: str, target: str | None) -> None:
    """pip install --no-index --no-deps --find-links `dest` of the missing packages; into `target`
    (then put on PYTHONPATH) when given: pip installs there even into an image's system Python that
    refuses other installs, and nothing of the image changes."""
    wanted = missing_packages(dest)
    if not wanted:
        print("every package of the kit is installed already")
        return
    where = ["--target", target] if target else []
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        *where,
        "--find-links",
        dest,
        *wanted,
    ]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


# The lent image's packages (docs/gpu.md), at the versions this environment has; torch is the CPU build.
IMAGE = [
    "transformers",
    "numpy",
    "pandas",
    "pyarrow",
    "safetensors",
    "tokenizers",
    "peft",
    "accelerate",
    "psutil",
    "msgpack",
    "aiohttp",
    "grpcio",
]


def image_venv(path: str, torch_spec: str) -> str:
    """A fresh venv standing in for the lent image: the CPU torch, the image's packages and their
    requirements, nothing else. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    python = os.path.join(path, "bin", "python")
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in IMAGE]
    uv = shutil.which("uv") or (os.path.join(os.path.dirname(sys.executable), "uv"))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("torch==2.13.0\n")  # whatever else resolves, torch stays the one installed first
        constraint = f.name
    if os.path.exists(uv):  # uv installs the ~50 packages from its cache in seconds
        run = lambda *a: subprocess.run([uv, "pip", "install", "-q", "--python", python, *a], check=True)  # noqa: E731
    else:
        run = lambda *a: pip(python, "install", *a)  # noqa: E731
    # pip's configuration on these machines finds torch 2.13.0's CPU wheel in a local folder
    # (PIP_FIND_LINKS); uv does not read it, and from the index it would take the CUDA build: uv gets
    # that wheel's file (its requirements from the index), pip the requirement and its configuration.
    version = torch_spec.split("==")[-1]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    local = sorted(
        os.path.join(d, f)
        for d in os.environ.get("PIP_FIND_LINKS", "").split()
        if os.path.isdir(d)
        for f in os.listdir(d)
        if f.startswith(f"torch-{version}+cpu-{tag}-") and f.endswith(".whl")
    )
    if os.path.exists(uv) and local:
        run(local[0])
    else:
        pip(python, "install", torch_spec)
    run("--constraint", constraint, *pins)
    os.remove(constraint)
    version = subprocess.run(
        [python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not version.endswith("+cpu"):
        raise SystemExit(f"the proof venv got torch {version}, not the CPU build")
    return python


def prove(kit_dir: str, venv_dir: str | None, torch_spec: str) -> int:
    """Build the kit for this Python (unless `kit_dir` holds one), install it into a fresh image-like
    venv with --no-index, and run `gpu_check.py --engine --device cpu` there."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = os.path.join(kit_dir, MANIFEST)
    cached = None
    if os.path.exists(manifest):
        with open(manifest) as f:
            cached = json.load(f)
    if cached is None or cached["packages"] != KIT or cached["python"] != here:
        build(kit_dir, here)
    else:
        print(f"kit for Python {here}: reusing {kit_dir} ({folder_mib(kit_dir):.1f} MiB)")
    venv_dir = venv_dir or tempfile.mkdtemp(prefix="gpu_kit_venv_")
    shutil.rmtree(venv_dir, ignore_errors=True)
    python = image_venv(venv_dir, torch_spec)
    # As on the GPU machine (docs/gpu.md): the kit into a folder of its own, on PYTHONPATH.
    site = os.path.join(venv_dir, "kit_site")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_FIND_LINKS")}
    # The kit alone: no pip configuration (this machine's adds a local wheel folder and indexes).
    subprocess.run(
        [python, __file__, "install", "--dest", kit_dir, "--target", site],
        check=True,
        env={**env, "PIP_CONFIG_FILE": os.devnull},
    )
    env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = site
    check = subprocess.run(
        [python, os.path.join(ROOT, "scripts", "gpu_check.py"), "--engine", "--device", "cpu"], env=env, cwd=ROOT
    )
    return check.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="assemble the kit from the package registry")
    b.add_argument("--python-version", default="3.12", help="the lent machine's Python (3.12)")
    b.add_argument("--dest", default=DEFAULT_DEST)
    i = sub.add_parser("install", help="install the kit's missing packages from the folder alone")
    i.add_argument("--dest", default=DEFAULT_DEST)
    i.add_argument("--target", help="install into this folder (put it on PYTHONPATH) instead of the environment")
    p = sub.add_parser("prove", help="this Python's kit in a fresh CPU venv; runs gpu_check.py --engine --device cpu")
    p.add_argument("--kit", default=os.path.join(ROOT, ".gpu_kit_py" + "".join(map(str, sys.version_info[:2]))))
    p.add_argument("--venv", help="where to build the venv (default: a new temporary folder)")
    p.add_argument("--torch", default="torch==2.13.0", help="the CPU torch to install (default: torch==2.13.0)")
    args = parser.parse_args()
    if args.command == "build":
        build(args.dest, args.python_version)
        return 0
    if args.command == "install":
        install(args.dest, args.target)
        return 0
    return prove(args.kit, args.venv, args.torch)


if __name__ == "__main__":
    sys.exit(main())
