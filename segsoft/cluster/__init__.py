"""Past one machine: segsoft on Dask (the ``dask`` extra: ``pip install 'segsoft[dask]'``).

Everything that touches dask or distributed lives in this package; the rest of
segsoft imports it only when ``--scheduler`` (``scheduler=``) is given, and the
core install never needs it. Importing this package imports no dask.

* :mod:`segsoft.cluster.client`: the ``--scheduler local|threads|ADDRESS``
  value, the client (a LocalCluster, the threaded scheduler or a running
  cluster) and the executor that runs a batch's per-image tasks on it.
"""
