"""Peak memory of `dm-tune create` and of a worker's first trial, in copies of the data.

Writes a synthetic npz of 32x32x3 uint8 images (NHWC, 20,000 by default, 10 classes) and
a campaign with five noise settings on it (symmetric 0.2/0.4/0.6, pairflip 0.2/0.4;
an MLP with one hidden layer of 32 units, 1 epoch, no baselines) into a temporary
folder, then runs each of these in its own process:

- ``imports``: imports what the commands import (torch, optuna, dm_tune.cli and the
  campaign / worker modules that exist) and stops;
- ``imports+dynamo``: the same plus ``torch._dynamo``, which torch itself imports on an
  optimiser's first step (~150 MiB): part of any training process, not of the data;
- ``create``: ``python -m dm_tune create CAMPAIGN --storage sqlite:///TMP/x.db``;
- ``worker``: ``python -m dm_tune worker CAMPAIGN --storage ... --max-trials 1 --device cpu``;
- ``prepare``: the same imports, then ``dm_tune.data.prepare_data`` for the five settings,
  keeping every result (what the campaign check does), without the CLI or a database.

Peak RSS is the process's VmHWM, read by an atexit hook before the interpreter tears its
modules down (the teardown alone adds ~130 MiB to a process that imported torch); the
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a fresh wrapper process around each one,
which includes the teardown, is printed too. One copy = one normalised float32 copy of
the images, N * 3 * 32 * 32 * 4 bytes. RESULT lines:

- ``create_peak_copies``, ``worker_peak_copies`` (target 1.3): (peak - imports) / copy;
- ``worker_peak_copies_dynamo_baseline``: (worker peak - imports+dynamo) / copy;
- ``create_data_copies``, ``worker_data_copies``: what grows with the data, (peak at N -
  peak at N/10) / (copy at N - copy at N/10) (not with ``--quick``);
- ``prepare_peak_copies``: (prepare peak - imports) / copy.

``--quick`` uses 2,000 images and skips the N/10 runs (a smoke test: at that size the
fixed costs of the commands dominate, so its ratios are not comparable).

    python benchmarks/memory.py            # 20,000 images (~1.5 min on 2 cores)
    python benchmarks/memory.py --quick    # 2,000 images (~40 s)
    PYTHONPATH=/path/to/other/checkout python benchmarks/memory.py   # measure other code
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

SETTINGS = (("symmetric", (0.2, 0.4, 0.6)), ("pairflip", (0.2, 0.4)))  # five settings
# the modules `create` and `worker` import, before and after the campaign refactoring
MODULES = ("dm_tune.campaign", "dm_tune.trials", "dm_tune.worker", "dm_tune.campaign.create",
           "dm_tune.campaign.worker", "dm_tune.campaign.run_trial", "dm_tune.training")
IMPORTS = textwrap.dedent(f"""
    import importlib, importlib.util
    import torch, optuna, dm_tune.cli, dm_tune.data
    for _name in {MODULES!r}:
        try:
            _found = importlib.util.find_spec(_name) is not None
        except ModuleNotFoundError:
            _found = False
        if _found:
            importlib.import_module(_name)
""")

# The wrapper runs one command and writes the child's ru_maxrss (KiB on Linux) as JSON.
WRAPPER = textwrap.dedent("""
    import json, resource, subprocess, sys
    with open(sys.argv[2], "w") as log:
        rc = subprocess.call(sys.argv[3:], stdout=log, stderr=subprocess.STDOUT)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(sys.argv[1], "w") as f:
        json.dump({"rc": rc, "maxrss_kib": peak}, f)
""")

# The measured process: runs a module (-m) or code (-c); an atexit hook (run before the
# interpreter's teardown) writes its VmHWM, the peak of the work itself.
LAUNCH = textwrap.dedent("""
    import atexit, runpy, sys
    out, mode, target = sys.argv[1:4]
    def _hwm():
        try:
            with open("/proc/self/status") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        except OSError:
            return
        with open(out, "w") as f:
            f.write(str(kib))
    atexit.register(_hwm)
    sys.argv = [target, *sys.argv[4:]]
    if mode == "-m":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        exec(compile(target, "<memory.py>", "exec"), {"__name__": "__main__"})
""")

PREPARE = IMPORTS + textwrap.dedent("""
    import sys
    from dm_tune.data import DataSpec, prepare_data
    kept = []
    for arg in sys.argv[2:]:
        kind, rate = arg.split(":")
        kept.append(prepare_data(DataSpec("npz", root=sys.argv[1], noise_kind=kind,
                                          noise_rate=float(rate))))
    print([d.label_digest[:12] for d in kept])
""")

CAMPAIGN = """\
[campaign]
name = "memory-bench"
seed = 0

[data]
dataset = "npz"
root = "{root}"
val_fraction = 0.1
test_fraction = 0.2

[model]
name = "mlp"
params = {{ hidden = [32] }}

[training]
epochs = 1
batch_size = 256
augment = false

{noise}
[search]
trials = 1
warm_start = "none"
pruner = "none"
startup_trials = 1
min_epochs = 1

[baselines]
losses = []
"""


def write_dataset(folder: Path, n: int, seed: int = 0) -> Path:
    """n random NHWC uint8 32x32x3 images in 10 classes, as an uncompressed npz."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    path = folder / "images.npz"
    np.savez(path, x=x, y=y)
    return path


def write_campaign(folder: Path, root: Path) -> Path:
    """The five-setting campaign on the npz at `root`."""
    noise = "".join(
        f'[[noise]]\nkind = "{kind}"\nrates = {list(rates)}\n\n' for kind, rates in SETTINGS
    )
    path = folder / "campaign.toml"
    path.write_text(CAMPAIGN.format(root=root.as_posix(), noise=noise), encoding="utf-8")
    return path


def peak_mib(command: list[str], folder: Path, label: str, env: dict[str, str]):
    """(VmHWM at exit, wrapper's ru_maxrss) in MiB of `python <mode> <target> args...`.

    `command` is [mode, target, *args]; exits with the log's tail on failure.
    """
    result, log, hwm = (folder / f"{label}.{ext}" for ext in ("json", "log", "hwm"))
    hwm.unlink(missing_ok=True)
    mode, target, *rest = command
    launched = [sys.executable, "-c", LAUNCH, str(hwm), mode, target, *rest]
    subprocess.run([sys.executable, "-c", WRAPPER, str(result), str(log), *launched],
                   check=True, env=env)
    measured = json.loads(result.read_text())
    if measured["rc"] != 0:
        sys.exit(f"memory.py: {label} failed (exit {measured['rc']}):\n"
                 + log.read_text()[-3000:])
    maxrss = measured["maxrss_kib"] / 1024.0
    return (int(hwm.read_text()) / 1024.0 if hwm.exists() else maxrss), maxrss


def measure(n: int, folder: Path, env: dict[str, str], baselines: bool) -> dict:
    """Peaks of create, worker and prepare (and the import baselines) on n images."""
    folder.mkdir(parents=True, exist_ok=True)
    root = write_dataset(folder, n)
    campaign = write_campaign(folder, root)
    db = folder / "x.db"
    db.unlink(missing_ok=True)
    storage = f"sqlite:///{db}"
    specs = [f"{kind}:{rate}" for kind, rates in SETTINGS for rate in rates]
    commands = {
        "create": ["-m", "dm_tune", "create", str(campaign), "--storage", storage],
        "worker": ["-m", "dm_tune", "worker", str(campaign), "--storage", storage,
                   "--max-trials", "1", "--device", "cpu", "--threads", "1", "--quiet"],
        "prepare": ["-c", PREPARE, str(root), *specs],
    }
    if baselines:
        commands = {"imports": ["-c", IMPORTS],
                    "imports+dynamo": ["-c", IMPORTS + "import torch._dynamo\n"], **commands}
    return {label: peak_mib(cmd, folder, label, env) for label, cmd in commands.items()}


def main() -> None:
    """Write the data and the campaign, measure the processes, print RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 images (smoke test)")
    parser.add_argument("--images", type=int, default=None, help="number of images")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write data, campaigns, databases and logs here (kept)")
    args = parser.parse_args()
    n = args.images or (2_000 if args.quick else 20_000)
    copy_mib = n * 3 * 32 * 32 * 4 / 2**20
    env = {**os.environ, "DM_TUNE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import dm_tune.data as d; print(d.__file__)"],
                           capture_output=True, text=True, env=env, check=True)
    print(f"# dm_tune.data: {where.stdout.strip()}; {n} images, one float32 copy "
          f"{copy_mib:.1f} MiB", flush=True)
    with tempfile.TemporaryDirectory(prefix="dm-tune-memory-") as tmp:
        folder = args.keep or Path(tmp)
        peaks = measure(n, folder / "full", env, baselines=True)
        small = None if args.quick else measure(n // 10, folder / "tenth", env, baselines=False)
    base, base_maxrss = peaks["imports"]
    for label, (value, maxrss) in peaks.items():
        print(f"# {label:14s} peak RSS {value:7.1f} MiB, above imports {value - base:6.1f} MiB"
              f" = {(value - base) / copy_mib:5.2f} copies; ru_maxrss (with teardown) "
              f"{maxrss:7.1f} MiB, above imports {maxrss - base_maxrss:6.1f} MiB")
    for label, (value, _) in (small or {}).items():
        print(f"# {label:14s} on {n // 10} images: peak RSS {value:7.1f} MiB")

    def copies(label: str, baseline: float) -> str:
        return f"{(peaks[label][0] - baseline) / copy_mib:.3f}"

    print(f"RESULT create_peak_copies {copies('create', base)} target 1.3")
    print(f"RESULT worker_peak_copies {copies('worker', base)} target 1.3")
    dynamo = peaks["imports+dynamo"][0]
    print(f"RESULT worker_peak_copies_dynamo_baseline {copies('worker', dynamo)} target -")
    if small is not None:
        grown = copy_mib - (n // 10) * 3 * 32 * 32 * 4 / 2**20
        for label in ("create", "worker"):
            value = (peaks[label][0] - small[label][0]) / grown
            print(f"RESULT {label}_data_copies {value:.3f} target -")
    print(f"RESULT prepare_peak_copies {copies('prepare', base)} target -")


if __name__ == "__main__":
    main()
