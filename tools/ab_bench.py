"""Same benchmark, two checkouts, one run: `python -m tools.ab_bench OLD_DIR NEW_DIR [benchmark flags]`.

Runs `experiments.benchmark` from each checkout in turn (old, new, old, new, ...) for --rounds rounds,
so both see the same machine load, and prints JSON with each cache x decoder's median seconds per
generation in both and the ratio new / old. A side may add flags of its own after `::`
(`DIR::--noscan_layers`, comma-separated), to compare two settings of one checkout.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile


def run(side: str, flags: list[str]) -> dict:
    checkout, _, own = side.partition("::")
    flags = flags + [f for f in own.split(",") if f]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        env = {**os.environ, "PYTHONPATH": checkout}
        subprocess.run([sys.executable, "-m", "experiments.benchmark", f"--output_json={out}", *flags],
                       cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            doc = json.load(f)
    return {f"{r['method']}/{r['decoder']}": r["wall_s_median"] for r in doc["results"]}


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit("usage: python -m tools.ab_bench OLD_DIR NEW_DIR [--rounds=N] [benchmark flags]")
    old, new, rest = argv[1], argv[2], argv[3:]
    rounds = 2
    for a in list(rest):
        if a.startswith("--rounds="):
            rounds = int(a.split("=", 1)[1])
            rest.remove(a)
    seen: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for _ in range(rounds):
        for name, path in (("old", old), ("new", new)):
            for k, v in run(path, rest).items():
                seen[name].setdefault(k, []).append(v)
    table = {k: {"old_s": statistics.median(seen["old"][k]), "new_s": statistics.median(seen["new"][k]),
                 "ratio_new_over_old": statistics.median(seen["new"][k]) / statistics.median(seen["old"][k])}
             for k in seen["new"] if k in seen["old"]}
    print(json.dumps({"rounds": rounds, "flags": rest, "results": table}, indent=1))


if __name__ == "__main__":
    main(sys.argv)
