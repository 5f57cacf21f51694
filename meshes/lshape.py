"""L-shaped domain [-1,1]^2 minus (0,1]x(0,1], meshed with linear triangles.

The re-entrant corner is at the origin. Physical groups:
    1 ("domain")   -- the 2D surface (cells)
    2 ("boundary") -- all six boundary segments (facets)

Usage (from the repository root):
    python meshes/lshape.py [--h 0.2] [--out meshes/lshape.msh]
"""

import argparse
from pathlib import Path

import gmsh

SURFACE_TAG = 1
BOUNDARY_TAG = 2
DEFAULT_H = 0.2
DEFAULT_OUT = Path(__file__).resolve().parent / "lshape.msh"

# Counter-clockwise outline; (0, 0) is the re-entrant corner.
CORNERS = [(-1.0, -1.0), (1.0, -1.0), (1.0, 0.0), (0.0, 0.0), (0.0, 1.0), (-1.0, 1.0)]


def build(h: float = DEFAULT_H) -> None:
    """Build and mesh the L-shape in the current gmsh session.

    ``gmsh.initialize()`` must have been called; the caller is responsible
    for writing the mesh and calling ``gmsh.finalize()``.
    """
    gmsh.model.add("lshape")

    # Deterministic meshing: single thread, fixed algorithm and seed.
    gmsh.option.setNumber("General.NumThreads", 1)
    gmsh.option.setNumber("Mesh.Algorithm", 6)  # Frontal-Delaunay
    gmsh.option.setNumber("Mesh.RandomSeed", 1)
    gmsh.option.setNumber("Mesh.ElementOrder", 1)

    geo = gmsh.model.geo
    points = [geo.addPoint(x, y, 0.0, h) for x, y in CORNERS]
    n = len(points)
    lines = [geo.addLine(points[i], points[(i + 1) % n]) for i in range(n)]
    loop = geo.addCurveLoop(lines)
    surf = geo.addPlaneSurface([loop])
    geo.synchronize()

    gmsh.model.addPhysicalGroup(2, [surf], SURFACE_TAG, name="domain")
    gmsh.model.addPhysicalGroup(1, lines, BOUNDARY_TAG, name="boundary")

    gmsh.model.mesh.generate(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h", type=float, default=DEFAULT_H,
                        help=f"characteristic mesh length (default {DEFAULT_H})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output .msh path (default: lshape.msh next to this script)")
    args = parser.parse_args()

    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        build(args.h)
        gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
        gmsh.option.setNumber("Mesh.Binary", 0)
        gmsh.option.setNumber("Mesh.SaveAll", 0)  # only physical groups
        gmsh.write(str(args.out))
    finally:
        gmsh.finalize()


if __name__ == "__main__":
    main()
