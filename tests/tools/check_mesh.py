#!/usr/bin/env python3
"""Checks exported meshes with trimesh: watertight, consistently wound, positive volume.

usage: check_mesh.py [--euler N] [--bodies N] FILE...
Vertices at the same position are merged first (UV seams split vertices in
GLB/OBJ; the surface is still closed). Prints one JSON line per file; exit 1
if any file fails.
"""
import argparse
import json
import sys

import trimesh


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--euler", type=int, help="expected Euler characteristic")
    ap.add_argument("--bodies", type=int, help="expected number of connected shells")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    ok = True
    for path in args.files:
        mesh = trimesh.load(path, force="mesh")
        mesh.merge_vertices(merge_tex=True, merge_norm=True)
        bodies = len(mesh.split(only_watertight=False))
        result = {
            "file": path,
            "faces": int(len(mesh.faces)),
            "watertight": bool(mesh.is_watertight),
            "winding_consistent": bool(mesh.is_winding_consistent),
            "volume": float(mesh.volume),
            "euler": int(mesh.euler_number),
            "bodies": bodies,
        }
        problems = []
        if not result["watertight"]:
            problems.append("not watertight")
        if not result["winding_consistent"]:
            problems.append("winding inconsistent")
        if not result["volume"] > 0:
            problems.append("volume not positive")
        if args.euler is not None and result["euler"] != args.euler:
            problems.append(f"euler {result['euler']} != {args.euler}")
        if args.bodies is not None and bodies != args.bodies:
            problems.append(f"bodies {bodies} != {args.bodies}")
        result["problems"] = problems
        ok &= not problems
        print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
