"""Training: the run configuration (``config``, ``settings``, ``legacy``) and, by concern, ``loop``
(the run path, the trainer, the update), ``optimisation``, ``parallel``, ``run_folder`` and
``exporting``."""
