"""Reference labels: engines (PySCF, tblite, ASE calculators), Dask runner, ASE-db store."""
