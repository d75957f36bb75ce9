"""Several processes: process groups and collectives (:mod:`~normlab.distributed.groups`) and
starting ranks (:mod:`~normlab.distributed.launch`)."""
