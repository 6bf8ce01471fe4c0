"""What confinement costs per generated program: the HumanEval canonical solutions run confined (namespaces) and
unconfined (temp dir + resource limits only), interleaved in one process, so the ratio is measured side by side.

    PYTHONPATH=. python bench/sandbox.py --problems 40 --repeats 3

Prints the mean and median wall seconds per program at each level, the confined/unconfined ratio and the added
milliseconds per program; every canonical solution must pass at both levels (else the bench says so and exits 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from hessian_lora.training import sandbox
from hessian_lora.training.evaluate import humaneval_problems, humaneval_program


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=40, help="first N HumanEval problems")
    parser.add_argument(
        "--repeats", type=int, default=3, help="passes over the problems (levels interleaved)"
    )
    args = parser.parse_args()
    confinement = sandbox.probe_confinement()
    if confinement.level != "namespaces":
        print(f"no confinement on this machine ({confinement.reason}): nothing to compare", file=sys.stderr)
        return 1
    programs = [
        humaneval_program(problem, problem["canonical_solution"])
        for problem in humaneval_problems(args.problems)
    ]
    seconds: dict[sandbox.ConfinementLevel, list[float]] = {"namespaces": [], "none": []}
    failures = 0
    for repeat in range(args.repeats):
        for index, program in enumerate(programs):
            # Alternate which level goes first, so neither always runs on a warmer page cache.
            levels: tuple[sandbox.ConfinementLevel, ...] = (
                ("namespaces", "none") if (index + repeat) % 2 == 0 else ("none", "namespaces")
            )
            for level in levels:
                start = time.perf_counter()
                status = sandbox.execute(program, timeout=30.0, memory_bytes=2 << 30, level=level)
                seconds[level].append(time.perf_counter() - start)
                failures += status != 0
    confined, unconfined = seconds["namespaces"], seconds["none"]
    print(f"{len(programs)} HumanEval canonical solutions x {args.repeats} repeats, levels interleaved")
    for level, values in seconds.items():
        print(
            f"  {level:>10}: mean {statistics.mean(values) * 1e3:7.1f} ms, median "
            f"{statistics.median(values) * 1e3:7.1f} ms per program"
        )
    print(
        f"  confined / unconfined: mean {statistics.mean(confined) / statistics.mean(unconfined):.2f}x, median "
        f"{statistics.median(confined) / statistics.median(unconfined):.2f}x; added "
        f"{(statistics.mean(confined) - statistics.mean(unconfined)) * 1e3:.1f} ms per program"
    )
    if failures:
        print(f"  {failures} canonical solutions did not pass: the comparison is void", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
