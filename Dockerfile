# fem_dnn: reproduce everything in a container.
#
#   docker build -t fem-dnn .
#   docker run --rm fem-dnn                   # the main job (./run main: digits, mpirun -n 2)
#   docker run --rm fem-dnn ./run test        # the test suite (default tier), serial and MPI
#   docker run --rm -v "$PWD/out:/fem_dnn/out_train" fem-dnn      # keep the run folder
#   docker run --rm fem-dnn ./run demo pmp 2  # a demo under mpirun -n 2
#   docker run --rm fem-dnn .venv/bin/mpirun -n 2 .venv/bin/fem-dnn train --set training.method='"newton"'
#   (fem-dnn gives each rank cores // ranks BLAS threads; a second run into the same folder needs --overwrite)
#
# The image performs exactly the install steps CI runs (./run setup, called by
# ./run test): a virtual environment with the dolfinx-solver-real wheel and the exact
# versions of constraints.txt, and the Debian libraries gmsh needs. On an official DOLFINx 0.11 image, `./run setup` reuses its
# DOLFINx instead of the wheel:
#   docker build --build-arg BASE=ghcr.io/fenics/dolfinx/dolfinx:v0.11.0 -t fem-dnn .
ARG BASE=python:3.12-bookworm
FROM ${BASE}
WORKDIR /fem_dnn
COPY . .
RUN ./run setup
CMD ["./run", "main"]
