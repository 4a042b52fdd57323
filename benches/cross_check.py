"""Cross-check resprop's gradients and SGD steps against NumPy and PyTorch over a grid.

For every placement x shortcut on a small residual MLP, and every placement x projection
convention (plus the shortcut kinds) on small conv ResNets, runs `resprop profile --npz` and
`docs/npz_reference.py` on the file, and prints one Markdown row per configuration with the
worst relative errors (x_l, dE/dx_l, every parameter gradient, two SGD steps). Exit status 1 if
any configuration exceeds the reference script's tolerance (1e-10).

    cargo build --release
    python benches/cross_check.py          # needs numpy; torch too for the PyTorch column
"""
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
RESPROP = os.path.join(HERE, "..", "target", "release", "resprop")
REFERENCE = os.path.join(HERE, "..", "docs", "npz_reference.py")

PLACEMENTS = ["original", "bn-after-add", "relu-before-add", "relu-preact", "full-preact"]
SHORTCUTS = ["identity", "scale:0.5", "scale:0.5:0.5", "gate:-2", "shortcut-gate:0", "conv1x1", "dropout:0.3", "none"]


def configs():
    for p in PLACEMENTS:
        for s in SHORTCUTS:
            yield ["--net", "mlp", "--units", "4", "--width", "12", "--batch", "6", "--placement", p, "--shortcut", s]
    for net in ["resnet:1:basic", "resnet:1:bottleneck"]:
        for p in PLACEMENTS:
            for proj in ["bn", "plain", "pad"]:
                yield ["--net", net, "--image-size", "8", "--batch", "3", "--placement", p, "--projection", proj]
    for s in SHORTCUTS:
        yield ["--net", "resnet:2:basic", "--image-size", "8", "--batch", "3", "--placement", "original", "--shortcut", s]


def numbers(line):
    return [float(v) for v in re.findall(r" ([0-9.]+e[+-][0-9]+)", line)]


def main():
    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "s.npz")
        for i, args in enumerate(configs()):
            subprocess.run([RESPROP, "profile", *args, "--seed", str(i), "--npz", npz], check=True, capture_output=True)
            r = subprocess.run([sys.executable, REFERENCE, npz], capture_output=True, text=True)
            lines = r.stdout.strip().splitlines()
            np_worst = max(numbers(lines[0]))
            torch_worst = max(numbers(lines[1])) if len(lines) > 1 and "PyTorch (" in lines[1] else None
            failed += r.returncode != 0
            rows.append((lines[0].split(": NumPy")[0], np_worst, torch_worst, r.returncode == 0))
    print("| configuration | worst rel. error, NumPy | worst rel. error, PyTorch | within 1e-10 |")
    print("|---|---|---|---|")
    for name, a, b, ok in rows:
        print(f"| {name} | {a:.1e} | {'-' if b is None else f'{b:.1e}'} | {'yes' if ok else 'NO'} |")
    print(f"\n{len(rows)} configurations, {failed} outside the tolerance; worst NumPy {max(r[1] for r in rows):.1e}"
          + (f", worst PyTorch {max(r[2] for r in rows if r[2] is not None):.1e}" if any(r[2] is not None for r in rows) else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
