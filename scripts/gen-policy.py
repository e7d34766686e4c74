#!/usr/bin/env python3
"""Writes a large policy directory for benchmarks: the bundled documents
policy plus a `bulk.grants` file of GRANTS grants of viewer/editor/owner
spread over USERS subjects and DOCUMENTS documents.

    scripts/gen-policy.py OUT [--grants 1000000] [--users 10000] [--documents 100000]

Deterministic: the same arguments write the same files.
"""
import argparse
import pathlib
import random
import shutil

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--grants", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--documents", type=int, default=100_000)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    for source in sorted((ROOT / "policies").glob("*.yaml")):
        shutil.copy(source, args.out / source.name)

    rng = random.Random(42)
    roles = ("viewer", "viewer", "viewer", "editor", "owner")
    seen = set()
    with open(args.out / "bulk.grants", "w") as out:
        out.write("# holder  role  resource (scripts/gen-policy.py)\n")
        written = 0
        while written < args.grants:
            user = rng.randrange(args.users)
            document = rng.randrange(args.documents)
            if (user, document) in seen:
                continue
            seen.add((user, document))
            out.write(f"subject:user{user} {rng.choice(roles)} document:{document}\n")
            written += 1
    print(f"wrote {args.out}: {args.grants} grants, {args.users} users, {args.documents} documents")


if __name__ == "__main__":
    main()
