"""Unit disk (radius 1, centre at the origin) meshed with linear triangles.

Physical groups:
    1 ("domain")   -- the 2D surface (cells)
    2 ("boundary") -- the boundary circle (facets)

Usage (from the repository root):
    python meshes/disk.py [--h 0.15] [--out meshes/disk.msh]
"""

import argparse
from pathlib import Path

import gmsh

SURFACE_TAG = 1
BOUNDARY_TAG = 2
DEFAULT_H = 0.15
DEFAULT_OUT = Path(__file__).resolve().parent / "disk.msh"


def build(h: float = DEFAULT_H) -> None:
    """Build and mesh the disk in the current gmsh session.

    ``gmsh.initialize()`` must have been called; the caller is responsible
    for writing the mesh and calling ``gmsh.finalize()``.
    """
    gmsh.model.add("disk")

    # Deterministic meshing: single thread, fixed algorithm and seed.
    gmsh.option.setNumber("General.NumThreads", 1)
    gmsh.option.setNumber("Mesh.Algorithm", 6)  # Frontal-Delaunay
    gmsh.option.setNumber("Mesh.RandomSeed", 1)
    gmsh.option.setNumber("Mesh.ElementOrder", 1)
    # Uniform target size h everywhere.
    gmsh.option.setNumber("Mesh.MeshSizeFromPoints", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
    gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 0)
    gmsh.option.setNumber("Mesh.MeshSizeMin", h)
    gmsh.option.setNumber("Mesh.MeshSizeMax", h)

    surf = gmsh.model.occ.addDisk(0.0, 0.0, 0.0, 1.0, 1.0)
    gmsh.model.occ.synchronize()

    curves = [tag for dim, tag in gmsh.model.getBoundary([(2, surf)], oriented=False) if dim == 1]
    gmsh.model.addPhysicalGroup(2, [surf], SURFACE_TAG, name="domain")
    gmsh.model.addPhysicalGroup(1, curves, BOUNDARY_TAG, name="boundary")

    gmsh.model.mesh.generate(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h", type=float, default=DEFAULT_H,
                        help=f"characteristic mesh length (default {DEFAULT_H})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output .msh path (default: disk.msh next to this script)")
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
