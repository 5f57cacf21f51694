"""The application: a run from a config, its files, and the ``fem-dnn`` command line.

- :mod:`fem_dnn.app.config`      the TOML config: every key with default, type, range
- :mod:`fem_dnn.app.data`        data sets (digits, bumps, NPZ/CSV)
- :mod:`fem_dnn.app.memory`      the memory model: sizes and peak memory before any allocation
- :mod:`fem_dnn.app.hjb_memory`  the memory model of an HJB solver
- :mod:`fem_dnn.app.system`      the machine: resident and available memory, PETSc's index
- :mod:`fem_dnn.app.run`         a run's data, discretisation, network and functionals
- :mod:`fem_dnn.app.train`       train a run: the optimiser and the run folder
- :mod:`fem_dnn.app.metrics`     the metrics of each iteration, the best iterate, early stopping
- :mod:`fem_dnn.app.adaptive_run` an adaptive run: the adaptive loop's cycles and records
- :mod:`fem_dnn.app.results`     a run's metrics, summary, fields and figures in its folder
- :mod:`fem_dnn.app.evaluate`    evaluate a trained run, verify a config's derivatives
- :mod:`fem_dnn.app.runfolder`   one run per folder, resume / overwrite
- :mod:`fem_dnn.app.checkpoint`  checksummed restart files in natural order
- :mod:`fem_dnn.app.output`      XDMF/VTX fields and PNG figures
- :mod:`fem_dnn.app.cli`         the command line
"""
