"""Pack the GPU day on the CPU machine: everything `gpu_check.py` needs on the device image that it lacks, in one
ignored folder that travels with the working tree (the `run` call's `carry`), and the exact `run` call to make.

    python benchmarks/gpu_pack.py [--budget-s 360] [--skip-done results/gpu/.../gpu_check.json]   # make gpu-pack
    python benchmarks/gpu_pack.py --keep /work/.device/<files_at>      # file what came back under results/gpu/

The folder (default `.gpu-pack/`) holds
- `wheels/`: cyclr itself (a wheel built from this tree, laid out as pyproject says) and, at the versions of this
  environment, every distribution the check imports that the device image lacks (fastprogress and what it imports),
  for CPython 3.12 on manylinux x86_64 (pure-Python wheels where they exist);
- `data/cifar10-jpg.tar.gz`: the CIFAR-10 tarball (`CYCLR_DATA` points at this folder; no Fashion-MNIST);
- `previous.json` with `--skip-done`: the earlier run's JSON, so the device reruns only what did not finish;
- `manifest.json`: what was packed, from which commit, and the sizes.
It prints the size of all that travels (the tree's tracked and untracked-not-ignored files plus the folder) against
the device's 64 MiB limit. Wheels already there at the right version are reused (the network is needed only once).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gpu_budget import load_previous

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACK = ROOT / ".gpu-pack"
TRAVEL_LIMIT = 64 * 2**20  # the device tool's limit on what travels: tree, shared/ and carried paths
COMMAND_LIMIT = 2000  # characters in one `run` command
# The device image's Python packages ('cuda' image, python 3.12, torch 2.11), as the device tool's KINDS.md lists
# them (read 2026-11-17): a distribution named here is not packed.
IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                    "manylinux1_x86_64", "any")
# What the check imports on the device, progress bars included (fastprogress is imported when a fit starts).
CHECK_IMPORTS = ("gpu_check", "gpu_blog", "fastprogress.fastprogress")
_LIST_DISTRIBUTIONS = """
import importlib.metadata as md, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
for name in sys.argv[3:]:
    __import__(name)
owners = md.packages_distributions()
found = {d for m in list(sys.modules) for d in owners.get(m.partition('.')[0], [])}
print(json.dumps({d: md.version(d) for d in sorted(found)}))
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions(python: str = sys.executable) -> dict[str, str]:
    """{distribution: version} of everything the check's modules import, as this environment resolves them."""
    done = subprocess.run([python, "-c", _LIST_DISTRIBUTIONS, str(ROOT / "benchmarks"), str(ROOT), *CHECK_IMPORTS],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"importing the check's modules failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def missing_on_device(distributions: dict[str, str]) -> dict[str, str]:
    image = {canonical(n) for n in IMAGE_PACKAGES}
    return {name: version for name, version in distributions.items()
            if canonical(name) not in image and canonical(name) != "cyclr"}


def is_wheel_of(file_name: str, name: str, version: str) -> bool:
    return file_name.lower().startswith(f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-")


def has_wheel(folder: Path, name: str, version: str) -> bool:
    return any(is_wheel_of(p.name, name, version) for p in folder.glob("*.whl"))


def download_wheels(missing: dict[str, str], folder: Path) -> None:
    """`pip download` each missing distribution for the device (CPython 3.12, manylinux x86_64 or pure Python)."""
    for name, version in sorted(missing.items()):
        if has_wheel(folder, name, version):
            continue
        platforms = [arg for platform in DEVICE_PLATFORMS for arg in ("--platform", platform)]
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                               "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder),
                               f"{name}=={version}"], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"no wheel of {name}=={version} for CPython 3.12 / manylinux x86_64:\n"
                             f"{done.stderr[-2000:]}\nbuild one, or pin another version in this environment")
    for stale in folder.glob("*.whl"):  # one version of each: two would stop the device's install
        wanted = any(is_wheel_of(stale.name, name, version) for name, version in missing.items())
        if not wanted and not stale.name.startswith("cyclr-"):
            stale.unlink()


def build_cyclr_wheel(folder: Path) -> Path:
    """cyclr from this tree, as pyproject lays it out (the `cyclr.*` namespace), without its dependencies."""
    for old in folder.glob("cyclr-*.whl"):
        old.unlink()
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(folder), str(ROOT)], capture_output=True, text=True, timeout=300)
    wheels = list(folder.glob("cyclr-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise SystemExit(f"building cyclr's wheel failed:\n{done.stderr[-3000:]}")
    return wheels[0]


def copy_data(folder: Path) -> Path:
    """The CIFAR-10 tarball, copied with its modification time (cyclr's decode cache keys on it)."""
    from cyclr.data.cifar10 import SHARED_TARBALL, TARBALL_NAME

    if not SHARED_TARBALL.is_file():
        raise SystemExit(f"the CIFAR-10 tarball is not at {SHARED_TARBALL}: copy cifar10-jpg.tar.gz there first")
    target = folder / TARBALL_NAME
    source = SHARED_TARBALL.stat()
    if not target.is_file() or target.stat().st_size != source.st_size or \
            target.stat().st_mtime_ns != source.st_mtime_ns:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SHARED_TARBALL, target)
    return target


def tree_bytes() -> int:
    """What travels of the tree: tracked and untracked-not-ignored files (shared/ too, when the checkout has it)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    paths = [ROOT / p.decode() for p in listed if p]
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_call(pack: Path, budget_s: float, skip_done: bool) -> dict:
    """The device tool's `run` arguments: install the wheels into /tmp/site, point CYCLR_DATA at the tarball, run."""
    rel = pack.relative_to(ROOT).as_posix()
    check = f"python3 benchmarks/gpu_check.py --budget-s {budget_s:g} --out $OUT/gpu_check.json"
    if skip_done:
        check += f" --skip-done {rel}/previous.json"
    command = (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "
               f"/tmp/site {rel}/wheels/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 "
               f"CYCLR_DATA=$PWD/{rel}/data XDG_CACHE_HOME=/tmp/cyclr-cache || exit 1; set -o pipefail; "
               f"{check} 2>&1 | tee $OUT/log.txt")
    # The check ends inside its budget; the margin covers the install, Python's start and a last write.
    return {"command": command, "carry": [rel], "timeout_s": int(budget_s + 45)}


def pack(folder: Path, budget_s: float, skip_done: str | None) -> dict:
    started = time.perf_counter()
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    needed = imported_distributions()
    missing = missing_on_device(needed)
    download_wheels(missing, wheels)
    cyclr_wheel = build_cyclr_wheel(wheels)
    tarball = copy_data(folder / "data")
    previous = folder / "previous.json"
    if skip_done:
        shutil.copyfile(skip_done, previous)
    elif previous.exists():
        previous.unlink()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    sizes = {"tree_bytes": tree_bytes(), "pack_bytes": folder_bytes(folder)}
    sizes["travels_bytes"] = sizes["tree_bytes"] + sizes["pack_bytes"]
    call = run_call(folder, budget_s, bool(skip_done))
    manifest = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": head, "wheels": sorted(
        p.name for p in wheels.glob("*.whl")), "packed_for_the_image": missing, "cyclr_wheel": cyclr_wheel.name,
        "data": tarball.relative_to(folder).as_posix(), **sizes, "limit_bytes": TRAVEL_LIMIT, "run": call,
        "pack_s": round(time.perf_counter() - started, 1)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def keep(files_at: Path) -> Path:
    """Copy what came back from the device into results/gpu/<date>_<device>/ (the date and device from its JSON)."""
    report = json.loads((files_at / "gpu_check.json").read_text())
    meta = report["meta"]
    name = f"{meta['date'][:10]}_{canonical(meta.get('device_name', 'device'))}"
    target = ROOT / "results" / "gpu" / name
    target.mkdir(parents=True, exist_ok=True)
    for path in files_at.iterdir():
        if path.is_file():
            shutil.copyfile(path, target / path.name)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack-dir", type=Path, default=DEFAULT_PACK, help="inside the repository (default .gpu-pack)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="the check's budget in the printed call")
    parser.add_argument("--skip-done", metavar="PREVIOUS.json", help="pack an earlier run's JSON: rerun the rest")
    parser.add_argument("--keep", type=Path, metavar="FILES_AT", help="file a device run's files under results/gpu/")
    args = parser.parse_args(argv)
    if args.keep:
        print(f"kept in {keep(args.keep)}")
        return
    if args.skip_done:
        load_previous(args.skip_done)  # a clear error now, before anything is packed
    folder = args.pack_dir.resolve()
    if ROOT not in folder.parents:
        raise SystemExit(f"--pack-dir {folder} must be inside the repository {ROOT}: only the tree travels")
    manifest = pack(folder, args.budget_s, args.skip_done)
    mib = 2**20
    print(f"packed {folder} in {manifest['pack_s']} s: {len(manifest['wheels'])} wheels "
          f"({', '.join(manifest['wheels'])}), {manifest['data']}")
    print(f"travels: tree {manifest['tree_bytes'] / mib:.1f} MiB + pack {manifest['pack_bytes'] / mib:.1f} MiB = "
          f"{manifest['travels_bytes'] / mib:.1f} MiB of the {TRAVEL_LIMIT / mib:.0f} MiB limit")
    if manifest["travels_bytes"] > TRAVEL_LIMIT:
        raise SystemExit("too large to travel: ignore or carry less")
    call = manifest["run"]
    if len(call["command"]) > COMMAND_LIMIT:
        raise SystemExit(f"the command has {len(call['command'])} characters, over the {COMMAND_LIMIT} limit")
    print(f"the run call ({len(call['command'])} characters):")
    print(json.dumps(call, indent=2))


if __name__ == "__main__":
    main()
