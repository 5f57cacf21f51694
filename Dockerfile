# fem_dnn: reproduce everything in a container.
#
#   docker build -t fem-dnn .
#   docker run --rm fem-dnn                   # the main job (./run main: mpirun -n 2)
#   docker run --rm fem-dnn ./run test        # the whole test suite, serial and MPI
#   docker run --rm -v "$PWD/out:/fem_dnn/out_forward" fem-dnn   # keep the output
#
# The image performs exactly the install steps CI runs (./run setup, called by
# ./run test): a virtual environment with the dolfinx-solver-real wheel, and the Debian
# libraries gmsh needs. On an official DOLFINx 0.11 image, `./run setup` reuses its
# DOLFINx instead of the wheel:
#   docker build --build-arg BASE=ghcr.io/fenics/dolfinx/dolfinx:v0.11.0 -t fem-dnn .
ARG BASE=python:3.12-bookworm
FROM ${BASE}
WORKDIR /fem_dnn
COPY . .
RUN ./run setup
CMD ["./run", "main"]
